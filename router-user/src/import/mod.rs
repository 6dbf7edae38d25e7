//! Desired state from another source's objects. [`neutron`]: Neutron's routers, ports,
//! subnets and floating IPs, as `openstack ... -f json` prints them ([`objects`]), mapped
//! to a [`DesiredState`](crate::config::DesiredState) (`routerctl import neutron`,
//! `docs/neutron-import.md`).
//!
//! The mapping is a pure function of the objects read ([`neutron::import`]): it reads no
//! file and asks no service, so any source of the same objects (a directory of the
//! client's output, a store) can feed it and write its result wherever it goes.

pub mod neutron;
pub mod objects;

#[cfg(test)]
mod tests;

pub use neutron::{ImportOptions, Imported, import};
pub use objects::NeutronObjects;
