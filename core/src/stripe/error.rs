//! The one error of the Stripe API client, for every caller: what went wrong (which
//! decides retryable or permanent, for fulfilment), Stripe's status and request id when
//! it answered (for checkout's log line), and our own words. Never Stripe's text: it
//! may quote our request or name our account.

use crate::ports::HttpResponse;
use crate::upstream::{retryable_status, StepError};

/// What went wrong with a Stripe API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Too little of the deadline was left to start the call: it was not made.
    NoTimeLeft,
    /// No answer within the call's timeout (in ms).
    TimedOut(u64),
    /// The call did not reach Stripe, or its answer did not reach us.
    Unreachable,
    /// Stripe answered with a status other than 2xx (in [`StripeError::status`]).
    Refused,
    /// Nothing we can use: an unreadable or incomplete answer, or an id that is not a
    /// Stripe id (then no call was made).
    Unusable,
}

/// A Stripe API call that did not give us what we needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeError {
    pub cause: Cause,
    /// Stripe's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Stripe's `Request-Id`, when it answered: for a support ticket.
    pub request_id: Option<String>,
    /// Our own words for what failed, fixed so that a log line can carry them as a
    /// label (checkout's `detail`). [`Self::message`] is the text with numbers.
    pub why: &'static str,
}

impl StripeError {
    /// No HTTP answer (or no call at all).
    pub(super) fn transport(cause: Cause) -> Self {
        let why = match cause {
            Cause::NoTimeLeft => "no time left to call the Stripe API",
            Cause::TimedOut(_) => "Stripe API timed out",
            _ => "Stripe API unreachable",
        };
        Self {
            cause,
            status: None,
            request_id: None,
            why,
        }
    }

    /// Stripe answered `response`, and it is not what we needed.
    pub(super) fn answered(response: &HttpResponse, cause: Cause, why: &'static str) -> Self {
        Self {
            cause,
            status: Some(response.status),
            request_id: response.request_id.clone(),
            why,
        }
    }

    /// Unusable before or without an answer (an id that is not a Stripe id, too many pages).
    pub(super) fn unusable(why: &'static str) -> Self {
        Self {
            cause: Cause::Unusable,
            status: None,
            request_id: None,
            why,
        }
    }

    /// Whether asking again later can help: a timeout, a network error, no time left in
    /// this delivery, or a 409, 429 or 5xx ([`retryable_status`], as for every upstream).
    pub fn is_retryable(&self) -> bool {
        match self.cause {
            Cause::NoTimeLeft | Cause::TimedOut(_) | Cause::Unreachable => true,
            Cause::Refused => self.status.is_some_and(retryable_status),
            Cause::Unusable => false,
        }
    }

    /// The text a step keeps in `last_error` and logs as `reason`, in the words every
    /// upstream's failures use (`Stripe API answered 503`).
    pub fn message(&self) -> String {
        match (self.cause, self.status) {
            (Cause::NoTimeLeft, _) => "no time left in this delivery to call the Stripe API".into(),
            (Cause::TimedOut(ms), _) => format!("Stripe API timed out after {ms} ms"),
            (Cause::Refused, Some(status)) => format!("Stripe API answered {status}"),
            _ => self.why.into(),
        }
    }
}

/// A step's view of a Stripe API failure: retryable or permanent, in [`StripeError::message`]'s words.
impl From<StripeError> for StepError {
    fn from(e: StripeError) -> Self {
        if e.is_retryable() {
            Self::Retryable(e.message())
        } else {
            Self::Permanent(e.message())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16) -> StripeError {
        let response = HttpResponse {
            status,
            body: br#"{"error":{"message":"No such price: 'price_1'"}}"#.to_vec(),
            request_id: Some("req_1".into()),
        };
        StripeError::answered(&response, Cause::Refused, "session creation refused")
    }

    #[test]
    fn failures_are_classified_as_every_upstream_failure_is() {
        for status in [409, 429, 500, 503] {
            assert_eq!(
                StepError::from(refused(status)),
                StepError::Retryable(format!("Stripe API answered {status}"))
            );
        }
        for status in [302, 400, 401, 404] {
            assert_eq!(
                StepError::from(refused(status)),
                StepError::Permanent(format!("Stripe API answered {status}"))
            );
        }
        assert_eq!(
            StepError::from(StripeError::transport(Cause::TimedOut(5_000))),
            StepError::Retryable("Stripe API timed out after 5000 ms".into())
        );
        assert_eq!(
            StepError::from(StripeError::transport(Cause::Unreachable)),
            StepError::Retryable("Stripe API unreachable".into())
        );
        assert_eq!(
            StepError::from(StripeError::transport(Cause::NoTimeLeft)),
            StepError::Retryable("no time left in this delivery to call the Stripe API".into())
        );
        assert_eq!(
            StepError::from(StripeError::unusable("an id is not a Stripe id")),
            StepError::Permanent("an id is not a Stripe id".into())
        );
    }

    #[test]
    fn an_answer_keeps_its_status_and_request_id_but_none_of_its_text() {
        let e = refused(400);
        assert_eq!(
            (e.status, e.request_id.as_deref()),
            (Some(400), Some("req_1"))
        );
        assert_eq!(e.why, "session creation refused");
        assert!(!format!("{e:?}{}", e.message()).contains("price_1"));
    }
}
