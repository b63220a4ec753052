//! An in-memory ledger with the same atomicity as the D1 statements, for native tests.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::{Claim, EventRecord, Ledger, LedgerError};

#[derive(Debug, Default)]
pub struct MemoryLedger {
    pub events: RefCell<BTreeMap<String, EventRecord>>,
    /// When set, every call fails as an unavailable database would.
    pub unavailable: std::cell::Cell<bool>,
}

impl MemoryLedger {
    fn check(&self, operation: &'static str) -> Result<(), LedgerError> {
        if self.unavailable.get() {
            return Err(LedgerError {
                operation,
                detail: "D1_ERROR: unavailable".into(),
            });
        }
        Ok(())
    }
}

impl Ledger for MemoryLedger {
    async fn claim_event(&self, record: &EventRecord) -> Result<Claim, LedgerError> {
        self.check("claim_event")?;
        let mut events = self.events.borrow_mut();
        if events.contains_key(&record.id) {
            return Ok(Claim::Seen);
        }
        events.insert(record.id.clone(), record.clone());
        Ok(Claim::New)
    }
}
