//! Argument types the verbs share: IPv4 prefixes checked before anything is sent, and the
//! older `--router R` spelling of the positional router id.

use std::{ffi::OsString, fmt, net::Ipv4Addr, str::FromStr};

/// An IPv4 prefix `a.b.c.d/len` (or, where a verb allows it, a bare address), as typed:
/// routerd judges host bits and what the prefix may be, naming the key; routerctl only
/// makes sure it is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: Option<u8>,
}

impl Cidr {
    /// `a.b.c.d/len`, the length required.
    pub fn prefix(s: &str) -> Result<Self, String> {
        let c = Self::from_str(s)?;
        if c.len.is_none() {
            return Err(format!("\"{s}\" is not an IPv4 prefix (a.b.c.d/len)"));
        }
        Ok(c)
    }

    /// `a.b.c.d/len` or `a.b.c.d`.
    pub fn prefix_or_address(s: &str) -> Result<Self, String> {
        Self::from_str(s)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("\"{s}\" is not an IPv4 prefix (a.b.c.d/len) or address");
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr = Ipv4Addr::from_str(addr).map_err(|_| bad())?;
        let len = match len {
            None => None,
            Some(l) => Some(l.parse::<u8>().ok().filter(|l| *l <= 32).ok_or_else(bad)?),
        };
        Ok(Self { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.len {
            Some(len) => write!(f, "{}/{len}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// The command line with `--router R` (or `--router=R`) moved to where the leaf verb takes
/// its positional ROUTER, right after the verb's name: scripts written for the older
/// spelling keep working. Verbs without a positional ROUTER are left as they are (clap
/// then reports `--router` as unknown).
pub fn router_flag_as_positional(mut args: Vec<OsString>, cli: &clap::Command) -> Vec<OsString> {
    // The verb: the chain of subcommand names, skipping the global options before them.
    let mut command = cli;
    let mut after_verb = 1;
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].to_string_lossy().into_owned();
        if let Some(sub) = command.find_subcommand(&arg) {
            command = sub;
            i += 1;
            after_verb = i;
            continue;
        }
        if arg.starts_with('-') && !arg.contains('=') && takes_value(cli, &arg) {
            i += 2;
        } else if arg.starts_with('-') {
            i += 1;
        } else {
            break;
        }
    }
    let has_router = command
        .get_arguments()
        .any(|a| a.get_id() == "router" && a.is_positional());
    if !has_router {
        return args;
    }
    let Some(at) = args[after_verb..]
        .iter()
        .position(|a| a == "--router" || a.to_string_lossy().starts_with("--router="))
        .map(|p| p + after_verb)
    else {
        return args;
    };
    let flag = args.remove(at);
    let value = match flag.to_string_lossy().strip_prefix("--router=") {
        Some(v) => OsString::from(v),
        None if at < args.len() => args.remove(at),
        None => return args,
    };
    args.insert(after_verb, value);
    args
}

/// Whether `arg` is a global option of `cli` that takes a value.
fn takes_value(cli: &clap::Command, arg: &str) -> bool {
    cli.get_arguments().any(|a| {
        let long = a.get_long().is_some_and(|l| arg == format!("--{l}"))
            || a.get_all_aliases()
                .is_some_and(|aliases| aliases.iter().any(|l| arg == format!("--{l}")));
        let short = a.get_short().is_some_and(|s| arg == format!("-{s}"));
        (long || short) && a.get_action().takes_values()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked_as_typed() {
        assert_eq!(
            Cidr::prefix("10.20.0.0/16").map(|c| c.to_string()),
            Ok("10.20.0.0/16".into())
        );
        assert!(Cidr::prefix("10.20.0.0").is_err());
        assert!(Cidr::prefix("10.20.0.0/33").is_err());
        assert!(Cidr::prefix("10.20.0/16").is_err());
        assert_eq!(
            Cidr::prefix_or_address("10.0.1.5").map(|c| c.to_string()),
            Ok("10.0.1.5".into())
        );
    }
}
