//! Every surface's answer, and nothing else decides a status code: one error → HTTP
//! mapping per surface (`webhook`, `checkout`, `orders`, `ops`, `health`), each with the log
//! line of its decision. The Worker only copies a [`Reply`] into a `Response`.

pub mod checkout;
pub mod health;
pub mod ops;
pub mod orders;
pub mod webhook;
