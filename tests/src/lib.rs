//! Shared helpers of the privileged tests: network-namespace guards, the topology builder
//! (`topology`) and the topologies built with it, the frame builder over etherparse (an
//! independent implementation of the headers, `frames`), and test runs of the router's
//! programs on frames (`testrun`).

pub mod corpus;
pub mod desired;
pub mod dvr;
pub mod etcd;
pub mod fixture;
pub mod flood;
pub mod frames;
pub mod ha;
pub mod held;
pub mod keepalived;
pub mod nat_topo;
pub mod netns;
pub mod neutron;
pub mod observe;
pub mod ovs;
pub mod packet_socket;
pub mod pins;
pub mod pki;
pub mod policy_topo;
pub mod probe;
pub mod routerd;
pub mod scale;
pub mod testrun;
pub mod topo;
pub mod topology;
pub mod traffic;

/// Panics with a clear message unless running as root (every test here needs it).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests need root: run them with `cargo xtask test`"
    );
}
