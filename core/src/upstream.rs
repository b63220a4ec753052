//! Calls to the services a purchase needs (license server, shipping system), behind a
//! trait so the engine runs natively against a fake, and the deadline every call gets,
//! the Stripe API client's ([`crate::stripe::api`]) included.
//!
//! Every failure is classified by the rule here: retryable (timeout, network, 409, 429,
//! 5xx: the step goes back to pending and Stripe's redelivery runs it again) or
//! permanent (any other 4xx, an answer we cannot use: the step fails and is not
//! retried). The Stripe API client applies it to its own error through
//! [`retryable_status`].

use crate::ports::{Clock, HttpRequest, HttpResponse, TransportError, Upstream};

/// The whole delivery must be answered within 10 s; calls get what is left of this.
pub const DELIVERY_BUDGET_MS: u64 = 9_000;
/// Below this, a call is not started: it could not finish, and starting it would only
/// make the upstream do work whose answer we would drop.
pub const MIN_CALL_MS: u64 = 250;

/// Which service a call went to, for error texts and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callee {
    License,
    Shipping,
    /// Resend's e-mail API.
    Email,
}

impl Callee {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::License => "license server",
            Self::Shipping => "shipping system",
            Self::Email => "e-mail service",
        }
    }
}

/// Why a step's attempt did not succeed. The text is ours (no upstream body, which may
/// hold customer data), so it can be stored in `last_error` and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    Retryable(String),
    Permanent(String),
    /// A setting the step needs is absent: fail closed, retry once it is set.
    NotConfigured(&'static str),
}

impl StepError {
    pub fn message(&self) -> String {
        match self {
            Self::Retryable(m) | Self::Permanent(m) => m.clone(),
            Self::NotConfigured(setting) => format!("{setting} is not set"),
        }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }
}

/// The time left for calls in this delivery.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at_ms: u64,
    pub per_call_ms: u64,
}

impl Deadline {
    pub fn new(started_ms: u64, per_call_ms: u64) -> Self {
        Self {
            at_ms: started_ms + DELIVERY_BUDGET_MS,
            per_call_ms,
        }
    }

    /// The timeout for a call starting now, or `None` when too little time is left.
    pub fn timeout(&self, now_ms: u64) -> Option<u64> {
        let left = self.at_ms.saturating_sub(now_ms);
        (left >= MIN_CALL_MS).then_some(left.min(self.per_call_ms))
    }
}

/// Sends `request` within the deadline and classifies the outcome; a 2xx body is returned.
pub async fn call(
    upstream: &impl Upstream,
    clock: &impl Clock,
    deadline: Deadline,
    service: Callee,
    request: HttpRequest,
) -> Result<Vec<u8>, StepError> {
    let response = exchange(upstream, clock, deadline, service, request).await?;
    classify(service, response)
}

/// [`call`] without classifying the status: the answer as it came, for a step that
/// reads a non-2xx body (the shipping system's `422 already_shipped`). Timeouts and
/// network failures are retryable, as for [`call`].
pub async fn exchange(
    upstream: &impl Upstream,
    clock: &impl Clock,
    deadline: Deadline,
    service: Callee,
    mut request: HttpRequest,
) -> Result<HttpResponse, StepError> {
    let name = service.as_str();
    let Some(timeout_ms) = deadline.timeout(clock.now_ms()) else {
        return Err(StepError::Retryable(format!(
            "no time left in this delivery to call the {name}"
        )));
    };
    request.timeout_ms = timeout_ms;
    match upstream.send(request).await {
        Err(TransportError::Timeout) => Err(StepError::Retryable(format!(
            "{name} timed out after {timeout_ms} ms"
        ))),
        Err(TransportError::Network(_)) => Err(StepError::Retryable(format!("{name} unreachable"))),
        Ok(response) => Ok(response),
    }
}

/// Whether a status other than 2xx may be answered differently later: 409 (the same
/// Idempotency-Key is still being processed), 429 and 5xx.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 409 | 429 | 500..=599)
}

/// The rule above, applied to one answer: its body when 2xx.
pub fn classify(service: Callee, response: HttpResponse) -> Result<Vec<u8>, StepError> {
    let name = service.as_str();
    match response.status {
        200..=299 => Ok(response.body),
        // The license server (Simple License Server) answers 409 only for an
        // Idempotency-Key reused with a different payload: retrying cannot help, and
        // answering 503 to Stripe for three days would hide it. (Its 500 under
        // concurrent same-key calls is transient and stays retryable.)
        409 if service == Callee::License => Err(StepError::Permanent(format!(
            "{name} answered 409 (Idempotency-Key reused with a different payload)"
        ))),
        status if retryable_status(status) => {
            Err(StepError::Retryable(format!("{name} answered {status}")))
        }
        status => Err(StepError::Permanent(format!("{name} answered {status}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Method;

    #[test]
    fn statuses_are_classified_once() {
        let classify = |status| {
            classify(
                Callee::License,
                HttpResponse {
                    status,
                    body: vec![],
                    request_id: None,
                },
            )
        };
        assert!(classify(201).is_ok());
        assert!(
            matches!(classify(409), Err(StepError::Permanent(_))),
            "the license server's 409 is a payload mismatch"
        );
        for status in [429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(status), Err(StepError::Retryable(_))),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 422] {
            assert!(
                matches!(classify(status), Err(StepError::Permanent(_))),
                "{status}"
            );
        }
    }

    #[test]
    fn a_call_gets_what_is_left_of_the_delivery_budget() {
        let deadline = Deadline::new(1_000, 5_000);
        assert_eq!(deadline.timeout(1_000), Some(5_000));
        assert_eq!(deadline.timeout(6_000), Some(4_000));
        assert_eq!(deadline.timeout(9_800), None);
    }

    #[test]
    fn debug_never_prints_header_values() {
        let request = HttpRequest {
            method: Method::Post,
            url: "https://x".into(),
            headers: vec![("authorization", "Bearer sk_secret".into())],
            body: None,
            timeout_ms: 1,
        };
        assert!(!format!("{request:?}").contains("sk_secret"));
    }
}
