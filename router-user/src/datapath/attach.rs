//! Attachment of a router's programs to its interfaces: native XDP, its link pinned so that
//! it outlives routerd and adopted from its pin by the next routerd, and the TC entry, a
//! direct-action `bpf` filter on the interface's `clsact` ingress, which outlives routerd by
//! itself and is found at its place by the next. Either has its program replaced
//! atomically on adoption.
//!
//! The TC entry is a filter rather than a tcx link because of what attaching costs: the
//! kernel makes every new tcx link wait for an RCU grace period (milliseconds) while it
//! holds the RTNL lock, so on a node starting its routers every attach of every router
//! queued behind the others' waits (4 of them per router of 4 interfaces: 1,000 routers
//! started in 94 s in TC mode, of which ~45 s were these waits). The first filter on an
//! interface waits for an expedited grace period at most (microseconds), and replacing one
//! waits for none.

use std::path::{Path, PathBuf};

use aya::programs::{
    ProgramError, TcAttachType, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{
        self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcError,
        TcHandle,
    },
    xdp::{XdpLink, XdpLinkId},
};

use super::{Attachment, Datapath, links_dir, remove_pin};
use crate::{config::Mode, error::Error};

/// What [`Datapath::attach`] did.
#[derive(Debug, Default)]
pub struct Attached {
    /// Links adopted from a previous routerd's pins.
    pub adopted: usize,
    /// Interfaces (by ifindex) where native XDP could not attach, with the kernel's reason,
    /// or was not to be attached, with the caller's: they run the TC entry alone.
    pub xdp_unavailable: Vec<(u32, String)>,
}

/// An error and its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Datapath {
    /// Attaches the programs to `interfaces` (by name, in the calling thread's namespace).
    /// XDP mode attaches native XDP and the TC entry beside it (the TC entry forwards what
    /// XDP cannot redirect); TC mode attaches only the TC entry.
    ///
    /// Where native XDP cannot attach to an interface in XDP mode (a driver without it, a
    /// device the kernel refuses it on), that interface runs the TC entry alone: the router
    /// starts rather than waiting for an attach that cannot succeed. Such interfaces and the
    /// kernel's reason come back in [`Attached::xdp_unavailable`]; the caller stops XDP
    /// redirecting into them. So do the interfaces of `tc_only` (by ifindex, with the
    /// reason), which the caller knows to send frames only the TC entry forwards right.
    ///
    /// A persistent datapath pins every link. Where a previous routerd left a link pinned for
    /// the interface, this program replaces the one in it atomically (`bpf_link_update`):
    /// no packet meets an interface without a program. Pinned links of interfaces no longer
    /// wanted are removed. Returns how many links were adopted.
    pub fn attach(
        &mut self,
        mode: Mode,
        interfaces: &[(String, u32)],
        tc_only: &[(u32, String)],
    ) -> Result<Attached, Error> {
        let mut attached = Attached::default();
        for (name, index) in interfaces {
            let mut xdp = mode.runs_xdp();
            let refused = tc_only.iter().find(|(i, _)| i == index);
            let xdp_link = if let (true, Some((_, reason))) = (xdp, refused) {
                tracing::info!(
                    "router {}: no XDP on {name} ({reason}); it runs the TC entry",
                    self.router
                );
                attached.xdp_unavailable.push((*index, reason.clone()));
                self.drop_link_pin(*index, "xdp")?;
                xdp = false;
                None
            } else if xdp {
                match self.attach_xdp(name, *index) {
                    Ok((id, reused)) => {
                        attached.adopted += usize::from(reused);
                        id
                    }
                    Err(e) => {
                        let reason = error_chain(&e);
                        tracing::warn!(
                            "router {}: native XDP unavailable on {name} ({reason}); it runs the TC entry",
                            self.router
                        );
                        attached.xdp_unavailable.push((*index, reason));
                        self.drop_link_pin(*index, "xdp")?;
                        xdp = false;
                        None
                    }
                }
            } else {
                self.drop_link_pin(*index, "xdp")?;
                None
            };
            let (tc_link, reused) = self.attach_tc(name)?;
            attached.adopted += usize::from(reused);
            // A tcx link an earlier build left pinned goes now that the filter runs.
            self.drop_link_pin(*index, "tc")?;
            self.links.insert(
                *index,
                Attachment {
                    name: name.clone(),
                    xdp,
                    xdp_link,
                    tc_link,
                },
            );
        }
        if self.persistent {
            let wanted: Vec<String> = interfaces.iter().map(|(_, i)| format!("{i}_xdp")).collect();
            if let Ok(entries) = std::fs::read_dir(links_dir(&self.router)) {
                for e in entries.flatten() {
                    let file = e.file_name().to_string_lossy().to_string();
                    if !wanted.contains(&file) {
                        tracing::info!("router {}: removing stale link pin {file}", self.router);
                        remove_pin(&e.path())?;
                    }
                }
            }
        }
        Ok(attached)
    }

    fn link_pin(&self, ifindex: u32, kind: &str) -> Option<PathBuf> {
        self.persistent
            .then(|| links_dir(&self.router).join(format!("{ifindex}_{kind}")))
    }

    fn drop_link_pin(&self, ifindex: u32, kind: &str) -> Result<(), Error> {
        match self.link_pin(ifindex, kind) {
            Some(path) => remove_pin(&path),
            None => Ok(()),
        }
    }

    /// Native XDP on `name`: the pinned link's program replaced, or a new link (pinned).
    /// Returns the link (`None` for a persistent datapath: its pin holds it) and whether it
    /// was adopted.
    pub(super) fn attach_xdp(
        &mut self,
        name: &str,
        index: u32,
    ) -> Result<(Option<XdpLinkId>, bool), Error> {
        let pin = self.link_pin(index, "xdp");
        let router = self.router.clone();
        let xdp = self.xdp_mut()?;
        if let Some(path) = pin.as_ref().filter(|p| p.exists()) {
            let adopted = PinnedLink::from_pin(path)
                .ok()
                .map(FdLink::from)
                .and_then(|fd| XdpLink::try_from(fd).ok())
                .and_then(|link| xdp.attach_to_link(link).ok());
            match adopted {
                // Its pin holds it: our descriptor is closed.
                Some(id) => {
                    drop(xdp.take_link(id));
                    return Ok((None, true));
                }
                None => {
                    tracing::info!(
                        "router {router}: pinned XDP link of {name} is gone; attaching anew"
                    );
                    remove_pin(path)?;
                }
            }
        }
        let id = xdp
            .attach_to_if_index(index, XdpMode::Driver)
            .map_err(|source| Error::Program {
                router: router.clone(),
                what: format!("attaching native XDP to {name}"),
                source: Box::new(source),
            })?;
        let Some(path) = pin else {
            return Ok((Some(id), false));
        };
        pin_link(xdp.take_link(id), &path)?;
        Ok((None, false))
    }

    /// The TC entry on `name`: its filter's program replaced if the filter is there (a
    /// previous routerd's), else a new filter (and the `clsact` qdisc if the interface has
    /// none). Returns the link (`None` for a persistent datapath: the filter outlives it)
    /// and whether it was adopted.
    pub(super) fn attach_tc(
        &mut self,
        name: &str,
    ) -> Result<(Option<SchedClassifierLinkId>, bool), Error> {
        let persistent = self.persistent;
        let router = self.router.clone();
        let tc = self.tc_mut()?;
        let failed = |what: &str, source: ProgramError| Error::Program {
            router: router.clone(),
            what: format!("{what} on {name}"),
            source: Box::new(source),
        };
        match tc::qdisc_add_clsact(name) {
            Ok(()) => {}
            Err(e) if os_error(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(failed("adding the clsact qdisc", e.into())),
        }
        let place = TcAttachOptions::Netlink(NlOptions {
            priority: TC_PRIORITY,
            handle: TC_HANDLE,
            classid: None,
        });
        let (id, adopted) = match tc.attach_with_options(name, TcAttachType::Ingress, place) {
            Ok(id) => (id, false),
            Err(e) if program_os_error(&e) == Some(libc::EEXIST) => {
                let link = SchedClassifierLink::attached(
                    name,
                    TcAttachType::Ingress,
                    TC_PRIORITY,
                    TC_HANDLE,
                    None,
                )
                .map_err(|e| failed("finding the TC filter", TcError::IoError(e).into()))?;
                let id = tc
                    .attach_to_link(link)
                    .map_err(|e| failed("replacing the TC filter's program", e))?;
                (id, true)
            }
            Err(e) => return Err(failed("attaching the TC filter", e)),
        };
        if !persistent {
            return Ok((Some(id), adopted));
        }
        // The filter stays when the link goes: a link's drop would delete it.
        let link = tc
            .take_link(id)
            .map_err(|e| failed("taking the TC filter's link", e))?;
        std::mem::forget(link);
        Ok((None, adopted))
    }

    /// Attaches the TC entry to interface `ifindex` again after someone else deleted its
    /// filter or the interface's `clsact` qdisc, if the interface is this persistent
    /// datapath's and still has that ifindex. Returns whether a filter was missing and is
    /// back (`false`: nothing to do, or the filter was there and kept its program).
    pub fn restore_tc_filter(&mut self, ifindex: u32) -> Result<bool, Error> {
        if !self.persistent {
            return Ok(false);
        }
        let Some(name) = self.links.get(&ifindex).map(|a| a.name.clone()) else {
            return Ok(false);
        };
        // Gone, or another interface by now: the interface's own events set it up.
        if nix::net::if_::if_nametoindex(name.as_str()).ok() != Some(ifindex) {
            return Ok(false);
        }
        let (_, adopted) = self.attach_tc(&name)?;
        Ok(!adopted)
    }

    /// Detaches the programs from one interface and forgets it (the interface was removed
    /// from the router).
    pub fn detach_iface(&mut self, ifindex: u32) -> Result<(), Error> {
        // A pinned link goes with its pin (routerd keeps no descriptor of it); a persistent
        // datapath's TC filter is deleted (a link of this datapath deletes its own).
        self.drop_link_pin(ifindex, "xdp")?;
        self.drop_link_pin(ifindex, "tc")?;
        if let Some(attached) = self.links.get(&ifindex)
            && attached.tc_link.is_none()
        {
            detach_tc_filter(&attached.name)?;
        }
        if let Some(attached) = self.links.remove(&ifindex) {
            if let Some(link) = attached.xdp_link {
                let _ = self.xdp_mut()?.detach(link);
            }
            if let Some(link) = attached.tc_link {
                let _ = self.tc_mut()?.detach(link);
            }
        }
        Ok(())
    }
}

/// Pins a link just taken from its program at `path`. The pin holds the link; dropping the
/// handle afterwards only closes our descriptor.
fn pin_link<L>(link: Result<L, aya::programs::ProgramError>, path: &Path) -> Result<(), Error>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let what = |e: String| {
        Error::io(
            format!("pinning {}", path.display()),
            std::io::Error::other(e),
        )
    };
    let link = link.map_err(|e| what(e.to_string()))?;
    let fd = FdLink::try_from(link).map_err(|e| what(e.to_string()))?;
    fd.pin(path).map_err(|e| what(e.to_string()))?;
    Ok(())
}

/// Where the TC entry sits among an interface's `clsact` ingress filters: first
/// (priority 1), at a handle of its own, so that the next routerd finds it there.
pub const TC_PRIORITY: u16 = 1;
/// The TC entry's filter handle, "RT" and 1: one no one else is likely to choose at
/// priority 1.
pub const TC_HANDLE_MAJOR: u16 = 0x5254;
pub const TC_HANDLE_MINOR: u16 = 1;
const TC_HANDLE: TcHandle = TcHandle::new(TC_HANDLE_MAJOR, TC_HANDLE_MINOR);

/// The errno of a failed netlink request, if it has one.
fn os_error(e: &TcError) -> Option<i32> {
    match e {
        TcError::NetlinkError(e) => e.raw_os_error(),
        TcError::IoError(e) => e.raw_os_error(),
        _ => None,
    }
}

/// Deletes the TC entry's filter from interface `name` (in the calling thread's
/// namespace), if it is there.
pub(super) fn detach_tc_filter(name: &str) -> Result<(), Error> {
    let detached =
        SchedClassifierLink::attached(name, TcAttachType::Ingress, TC_PRIORITY, TC_HANDLE, None)
            .map_err(|e| ProgramError::from(TcError::IoError(e)))
            .and_then(|link| {
                use aya::programs::links::Link as _;
                link.detach()
            });
    match detached {
        Ok(()) => Ok(()),
        // No such filter, qdisc or interface: nothing of ours runs there.
        Err(e)
            if matches!(
                program_os_error(&e),
                Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(Error::io(
            format!("deleting the TC filter of {name}"),
            std::io::Error::other(e.to_string()),
        )),
    }
}

/// The errno of a failed netlink request made for a program, if it has one.
fn program_os_error(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::TcError(e) => os_error(e),
        ProgramError::NetlinkError(e) => e.raw_os_error(),
        _ => None,
    }
}
