//! The desired state written over the operator's file, for the API's edits: only what
//! changed is rewritten, so the file keeps its comments, its layout and its order.
//!
//! The new state is rendered whole ([`DesiredState::to_toml`]) and read as a TOML document;
//! the existing file is then brought to it part by part. A router whose typed value did not
//! change keeps its table exactly as written. In a changed router, a key whose value equals
//! the rendered one (as a value, not as text) keeps its formatting and comments, a key
//! whose value differs gets the rendered value (its comment lines above stay, a trailing
//! comment on the old value goes with it), a key the new state no longer has is removed,
//! and a new key is appended. Arrays of tables (`[[router.interface]]`, `[[router.route]]`,
//! ...) are matched element by element: an element equal to a rendered one is kept, one
//! whose first key (interface name, floating IP address, route destination, ...) matches is
//! edited the same way, and the others are replaced. The result is parsed again and must
//! give the new state; if it does not, the whole rendering is written instead, so a merge
//! can cost comments but never correctness.

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, Value};

use super::DesiredState;

impl DesiredState {
    /// The state as a desired-state file, written over `existing` (the file as it is):
    /// what did not change keeps its text. Falls back to [`DesiredState::to_toml`] when
    /// `existing` is not a valid desired-state file or the merge does not read back as
    /// this state.
    pub fn to_toml_over(&self, existing: &str) -> String {
        let rendered = self.to_toml();
        match merge(existing, &rendered, self) {
            Some(text) if DesiredState::parse(&text).as_ref() == Ok(self) => text,
            Some(_) => {
                tracing::warn!(
                    "desired state: the edited file does not read back as the new state; \
                     writing the state whole (the file's comments are lost)"
                );
                rendered
            }
            None => {
                tracing::warn!(
                    "desired state: the file on disk is not a desired state this edit can \
                     read; writing the state whole (the file's comments are lost)"
                );
                rendered
            }
        }
    }
}

/// `existing` brought to `rendered` (the text of `new`), or `None` when either is not a
/// document this merge can read (the caller then writes `rendered` whole).
fn merge(existing: &str, rendered: &str, new: &DesiredState) -> Option<String> {
    let old = DesiredState::parse(existing).ok()?;
    let mut doc: DocumentMut = existing.parse().ok()?;
    let target: DocumentMut = rendered.parse().ok()?;
    let root = doc.as_table_mut();

    // The routers, matched by id; one whose typed value is unchanged is kept as written.
    let mut kept: Vec<Option<Table>> = match root.remove("router") {
        Some(Item::ArrayOfTables(a)) => a.into_iter().map(Some).collect(),
        Some(_) => return None,
        None => Vec::new(),
    };
    let mut routers = ArrayOfTables::new();
    if let Some(Item::ArrayOfTables(wanted)) = target.get("router") {
        for (router, want) in new.routers.iter().zip(wanted.iter()) {
            let slot = kept.iter().position(|t| {
                t.as_ref()
                    .and_then(|t| t.get("id"))
                    .and_then(Item::as_str)
                    .is_some_and(|id| id == router.id)
            });
            let table = match slot.and_then(|i| kept[i].take()) {
                Some(table) if old.router(&router.id) == Some(router) => table,
                Some(mut table) => {
                    merge_table(&mut table, want);
                    table
                }
                None => {
                    let mut table = want.clone();
                    if !routers.is_empty() && table.decor().prefix().is_none_or(is_blank) {
                        table.decor_mut().set_prefix("\n");
                    }
                    table
                }
            };
            routers.push(table);
        }
    }
    // A removed router that held the file's opening comments (the text above the first
    // `[[router]]`, up to its last blank line) leaves them to the router now first.
    if let Some(Some(first)) = kept.first()
        && let Some(prefix) = first.decor().prefix().and_then(|p| p.as_str())
        && let Some(end) = prefix.rfind("\n\n")
        && let Some(next) = routers.get_mut(0)
    {
        let opening = prefix[..end + 2].to_string();
        let own = next
            .decor()
            .prefix()
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .trim_start_matches('\n')
            .to_string();
        next.decor_mut().set_prefix(format!("{opening}{own}"));
    }
    if !routers.is_empty() {
        root.insert("router", Item::ArrayOfTables(routers));
    }
    let mut position = 1;
    renumber(doc.as_table_mut(), &mut position);
    Some(doc.to_string())
}

fn is_blank(text: &toml_edit::RawString) -> bool {
    text.as_str().is_none_or(|s| s.trim().is_empty())
}

/// Brings `have` to `want` in place (see the module's rules).
fn merge_table(have: &mut Table, want: &Table) {
    let gone: Vec<String> = have
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| !want.contains_key(k))
        .collect();
    for key in gone {
        have.remove(&key);
    }
    for (key, item) in want.iter() {
        match have.get_mut(key) {
            Some(existing) => merge_item(existing, item),
            None => match want.key(key) {
                Some(k) => {
                    have.insert_formatted(k, item.clone());
                }
                None => {
                    have.insert(key, item.clone());
                }
            },
        }
    }
}

fn merge_item(have: &mut Item, want: &Item) {
    match (have, want) {
        (Item::Value(a), Item::Value(b)) => {
            if !same_value(a, b) {
                *a = b.clone();
            }
        }
        (Item::Table(a), Item::Table(b)) => merge_table(a, b),
        (Item::ArrayOfTables(a), Item::ArrayOfTables(b)) => merge_array(a, b),
        (have, want) => *have = want.clone(),
    }
}

/// An array of tables brought to `want`, element by element: equal elements are kept,
/// elements with the same first key are edited, the others are the rendered ones.
fn merge_array(have: &mut ArrayOfTables, want: &ArrayOfTables) {
    let mut pool: Vec<Option<Table>> = std::mem::take(have).into_iter().map(Some).collect();
    for (index, w) in want.iter().enumerate() {
        // Most elements keep their place: the one at the same position is tried first, so
        // a list of thousands (floating IPs) is matched in one pass, not one per element.
        let in_place = pool
            .get(index)
            .and_then(Option::as_ref)
            .is_some_and(|t| same_table(t, w))
            .then_some(index);
        let equal = in_place.or_else(|| {
            pool.iter()
                .position(|t| t.as_ref().is_some_and(|t| same_table(t, w)))
        });
        let table = match equal.and_then(|i| pool[i].take()) {
            Some(t) => t,
            None => {
                let same_first = w.iter().next().and_then(|(key, value)| {
                    pool.iter().position(|t| {
                        t.as_ref()
                            .and_then(|t| t.get(key))
                            .is_some_and(|v| same_item(v, value))
                    })
                });
                match same_first.and_then(|i| pool[i].take()) {
                    Some(mut t) => {
                        merge_table(&mut t, w);
                        t
                    }
                    None => w.clone(),
                }
            }
        };
        have.push(table);
    }
}

fn same_item(a: &Item, b: &Item) -> bool {
    match (a, b) {
        (Item::Value(a), Item::Value(b)) => same_value(a, b),
        (Item::Table(a), Item::Table(b)) => same_table(a, b),
        (Item::ArrayOfTables(a), Item::ArrayOfTables(b)) => {
            a.len() == b.len() && a.iter().zip(b.iter()).all(|(a, b)| same_table(a, b))
        }
        _ => false,
    }
}

fn same_table(a: &Table, b: &Table) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| same_item(v, w)))
}

/// Equal as values, whatever their formatting and comments.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.value() == b.value(),
        (Value::Integer(a), Value::Integer(b)) => a.value() == b.value(),
        (Value::Float(a), Value::Float(b)) => a.value() == b.value(),
        (Value::Boolean(a), Value::Boolean(b)) => a.value() == b.value(),
        (Value::Datetime(a), Value::Datetime(b)) => a.value() == b.value(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b.iter()).all(|(a, b)| same_value(a, b))
        }
        (Value::InlineTable(a), Value::InlineTable(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => false,
    }
}

/// Numbers the tables in the order they are nested (a table, then its sub-tables in the
/// order of its keys), which is the order they are written in: kept tables stay in the
/// file's order (a file written top-down is nested in that order), and a new table comes
/// after its parent's other tables instead of where it stood in the rendering.
fn renumber(table: &mut Table, next: &mut isize) {
    for (_, item) in table.iter_mut() {
        match item {
            Item::Table(t) => {
                if !t.is_dotted() {
                    t.set_position(*next);
                    *next += 1;
                }
                renumber(t, next);
            }
            Item::ArrayOfTables(a) => {
                for t in a.iter_mut() {
                    t.set_position(*next);
                    *next += 1;
                    renumber(t, next);
                }
            }
            _ => {}
        }
    }
}
