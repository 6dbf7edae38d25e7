//! An API request against the node: queries are answered, edits are checked, recorded in
//! the state file's journal and applied, or taken back (journal and routers) when applying
//! fails.

use std::time::Instant;

use super::{NodeController, StateFile};
use crate::{
    api::{self, ApiError, ChangeResult, ErrorCode, Plan, Request, Response},
    router::Writes,
};

impl NodeController {
    /// Answers a query from the desired state and the running routers; an edit is refused
    /// as not a query (a caller whose state comes from elsewhere refuses edits first, with
    /// its own reason).
    pub fn answer(&mut self, request: &Request) -> Response {
        let mut live = self.live();
        live.read_counters(&self.desired, request);
        match api::plan_with(&self.desired, request, &live) {
            Ok(Plan::Answer(value)) => Response::success(value),
            Ok(_) => Response::failure(ApiError::new(
                ErrorCode::Invalid,
                format!(
                    "{} changes the desired state; only queries are answered",
                    op_name(request)
                ),
            )),
            Err(e) => Response::failure(e),
        }
    }

    /// Serves one API request. A query is answered from the desired state and the running
    /// routers. An edit is planned against the desired state (an invalid one is refused
    /// with nothing changed), recorded in `file`'s journal durably ([`StateFile::record`];
    /// the file itself is rewritten later, [`StateFile::fold`]), and applied all or nothing
    /// ([`NodeController::apply`]); if applying fails, the record is taken back first (a
    /// crash from then on restarts with the previous state), then the routers, and the
    /// response says what failed and whether the previous state is whole again.
    pub async fn handle(&mut self, request: &Request, file: &StateFile) -> Response {
        let started = Instant::now();
        let op = op_name(request);
        let mut live = self.live();
        live.read_counters(&self.desired, request);
        let plan = match api::plan_with(&self.desired, request, &live) {
            Ok(plan) => plan,
            Err(e) => {
                if request.is_mutation() {
                    tracing::warn!("routerd: API {op}: rejected: {e}");
                }
                return Response::failure(e);
            }
        };
        let new = match plan {
            Plan::Answer(value) => return Response::success(value),
            Plan::Unchanged => {
                tracing::info!("routerd: API {op}: already so, nothing written");
                return Response::success(change_result(Vec::new(), true, Writes::default()));
            }
            Plan::Change(new) => new,
        };
        if let Err(e) = api::preflight(&self.desired, &new) {
            tracing::warn!("routerd: API {op}: rejected: {e}");
            return Response::failure(e);
        }
        let changed = api::changed_routers(&self.desired, &new);
        // Durable before it is applied: a crash from here on restarts with the edit.
        let mark = match file.record(request) {
            Ok(mark) => mark,
            Err(e) => {
                tracing::error!("routerd: API {op}: {e}; nothing changed");
                return Response::failure(ApiError::new(
                    ErrorCode::Internal,
                    format!("{e}; nothing changed"),
                ));
            }
        };
        let path = file.path().display();
        tracing::info!(
            "routerd: API {op}: recorded, applying (routers {})",
            changed.join(", ")
        );
        let failed = match self.apply(new, started).await {
            Ok(writes) => {
                tracing::info!(
                    "routerd: API {op}: applied; {} map and {} kernel writes",
                    writes.map,
                    writes.kernel
                );
                return Response::success(change_result(changed, false, writes));
            }
            Err(failed) => failed,
        };
        let failures = failed.failures.join("; ");
        tracing::error!(
            "routerd: API {op}: applying failed ({failures}); restoring the previous state"
        );
        let mut problems = Vec::new();
        if let Err(e) = file.unrecord(mark) {
            problems.push(format!("taking the edit back: {e}"));
        }
        problems.extend(self.roll_back(failed).await);
        if problems.is_empty() {
            tracing::info!("routerd: API {op}: previous state restored");
            Response::failure(ApiError::new(
                ErrorCode::ApplyFailed,
                format!(
                    "{failures}; nothing changed ({path} and the running routers are as before)"
                ),
            ))
        } else {
            let problems = problems.join("; ");
            tracing::error!("routerd: API {op}: restoring the previous state: {problems}");
            Response::failure(ApiError::new(
                ErrorCode::RestoreFailed,
                format!("{failures}; restoring the previous state failed too: {problems}"),
            ))
        }
    }
}

/// The result of an edit: the routers it changed, whether it asked for what already was,
/// and what it wrote.
fn change_result(
    changed_routers: Vec<String>,
    unchanged: bool,
    writes: Writes,
) -> serde_json::Value {
    serde_json::to_value(ChangeResult {
        changed_routers,
        unchanged,
        writes,
    })
    .unwrap_or_default()
}

/// The request's `op` (its name in the protocol), for the log.
fn op_name(request: &Request) -> String {
    serde_json::to_value(request)
        .ok()
        .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(String::from))
        .unwrap_or_default()
}
