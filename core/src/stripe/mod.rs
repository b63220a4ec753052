//! Stripe: webhook signatures, the event and Checkout Session models, and the one
//! client of Stripe's API.

pub mod api;
pub mod event;
pub mod signature;
