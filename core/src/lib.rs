//! stripe-edge's core: every decision the Worker makes, with no JavaScript in reach.
//!
//! This crate has no `worker`, `web-sys`, `js-sys` or `wasm-bindgen` dependency, so the
//! compiler keeps it pure; the Worker crate at the repository root implements its
//! [`ports`] with bindings and calls the functions below from its entry points. Every
//! feature is a folder; [`http`] is the one place status codes are decided. The map is
//! CONTRIBUTING.md.

pub mod checkout;
pub mod fulfilment;
pub mod http;
pub mod ingress;
pub mod log;
pub mod maintenance;
pub mod ops;
pub mod orders;
pub mod ports;
pub mod queue_mode;
pub mod relay;
pub mod settings;
pub mod stripe;
pub mod upstream;

/// In-memory fakes of every port, for native tests (this crate's, and any other's with
/// the `test-utils` feature).
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
