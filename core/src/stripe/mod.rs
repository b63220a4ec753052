//! Stripe: webhook signatures, the event and Checkout Session models, and the one
//! client of Stripe's API (`api`, checkout's calls in `checkout_api`) with its one
//! error (`error`).

pub mod api;
pub mod checkout_api;
pub mod error;
pub mod event;
pub mod reversal_object;
pub mod signature;
