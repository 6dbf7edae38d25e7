//! Expedited RCU grace periods while a node's routers start (`routerd --expedited-start`).
//!
//! Some attachments wait for an RCU grace period while holding the kernel's RTNL lock (a
//! tcx link, the kernel's XDP dispatcher while it takes new programs), so where a node's
//! routers make them, their starts queue behind each other's waits. Expedited grace
//! periods end in microseconds instead of milliseconds, at the cost of an interrupt to
//! every CPU for each; the kernel offers the switch for phases like this one (a system's
//! boot). routerd's TC entry is a filter, whose attach waits for no normal grace period, so
//! on this project's kernels the switch no longer shortens a start (`docs/scale*.md`).

use crate::error::Error;

/// The kernel's switch: 1 expedites every grace period.
const SWITCH: &str = "/sys/kernel/rcu_expedited";

/// Grace periods expedited while this lives; the switch goes back to what it was when it is
/// dropped (a routerd killed meanwhile leaves it set, which only costs interrupts).
pub struct ExpeditedGrace {
    previous: String,
}

impl ExpeditedGrace {
    pub fn begin() -> Result<Self, Error> {
        let previous = std::fs::read_to_string(SWITCH)
            .map_err(|e| Error::io(format!("reading {SWITCH}"), e))?
            .trim()
            .to_string();
        std::fs::write(SWITCH, "1").map_err(|e| Error::io(format!("writing 1 to {SWITCH}"), e))?;
        tracing::info!(
            "routerd: RCU grace periods expedited while the routers start ({SWITCH} was {previous})"
        );
        Ok(Self { previous })
    }
}

impl Drop for ExpeditedGrace {
    fn drop(&mut self) {
        match std::fs::write(SWITCH, &self.previous) {
            Ok(()) => tracing::info!(
                "routerd: RCU grace periods as before the start ({SWITCH} = {})",
                self.previous
            ),
            Err(e) => tracing::warn!(
                "routerd: could not set {SWITCH} back to {}: {e}",
                self.previous
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch() -> String {
        std::fs::read_to_string(SWITCH)
            .expect("reading the switch")
            .trim()
            .to_string()
    }

    #[test]
    fn grace_periods_are_expedited_while_it_lives_and_set_back_after() {
        let before = switch();
        let expedited = ExpeditedGrace::begin().expect("expediting");
        assert_eq!(switch(), "1");
        drop(expedited);
        assert_eq!(switch(), before);
    }
}
