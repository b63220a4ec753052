//! The D1 adapters: the only home of SQL in this project. Each implements a port of
//! the core (`stripe_edge_core::ports`) over the `DB` binding; the schema is
//! `migrations/`.

use stripe_edge_core::ports::ledger::LedgerError;
use worker::wasm_bindgen::JsValue;

pub mod ledger;
pub mod ops_store;
pub mod orders;
mod reversal;
mod round;
pub mod throttle;

pub use ledger::D1Ledger;
pub use throttle::D1Throttle;

/// A failed D1 call as the ledger reports it. The detail is one line: D1's own message
/// for a D1 error (workers-rs prints those as a multi-line debug dump with the
/// JavaScript stack), else the error as workers-rs describes it.
pub(super) fn failure(operation: &'static str) -> impl Fn(worker::Error) -> LedgerError {
    move |e| LedgerError {
        operation,
        detail: match e {
            worker::Error::D1(d1) => format!("D1: {}", d1.cause()),
            other => other.to_string(),
        },
    }
}

/// A JavaScript exception of a D1 call, as `failure` reports the binding's errors.
pub(crate) fn js_failure(operation: &'static str) -> impl Fn(JsValue) -> LedgerError {
    move |e| failure(operation)(worker::Error::from(e))
}

pub(super) fn text(value: &str) -> JsValue {
    JsValue::from_str(value)
}

pub(super) fn opt_text(value: Option<&str>) -> JsValue {
    value.map_or(JsValue::NULL, JsValue::from_str)
}

/// D1 takes JavaScript numbers; every integer we store is far below 2^53.
pub(super) fn int(value: i64) -> JsValue {
    JsValue::from_f64(value as f64)
}
