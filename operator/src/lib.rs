//! The Switchboard operator.

pub mod crd_install;
