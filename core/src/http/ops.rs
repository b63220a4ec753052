//! The ops API's answers (`/admin/`): the status code of every [`OpsAnswer`], decided
//! here and nowhere else, and the log lines of the call.

use super::webhook::Reply;
use crate::log::Line;
use crate::ops::{AdminRefusal, OpsAnswer};

/// The status code of a refused call.
pub fn refusal_status(refusal: &AdminRefusal) -> u16 {
    match refusal {
        AdminRefusal::NotFound => 404,
        AdminRefusal::Unauthorized => 401,
        AdminRefusal::MethodNotAllowed(_) => 405,
        AdminRefusal::BadRequest(_) => 400,
    }
}

/// The answer to a call, and the lines to log (the call's own line last, with its
/// status and duration).
pub fn respond(answer: OpsAnswer, line: Line, duration_ms: u64) -> (Reply, Vec<Line>) {
    let mut lines = Vec::new();
    // A refusal's line has no duration: nothing ran.
    let timed = !matches!(answer, OpsAnswer::Refused(_));
    let reply = match answer {
        OpsAnswer::Refused(refusal) => {
            let mut reply = Reply::error(refusal_status(&refusal), refusal.message());
            if let AdminRefusal::MethodNotAllowed(allow) = refusal {
                reply.allow = Some(allow);
            }
            reply
        }
        OpsAnswer::Found(body) => Reply::json(200, body),
        OpsAnswer::NoSuchEvent => Reply::error(404, "no such event"),
        OpsAnswer::NoSuchPurchase => Reply::error(404, "no such purchase"),
        OpsAnswer::SessionUnavailable(body) => Reply::json(502, body),
        OpsAnswer::NotConfigured(setting) => Reply::error(
            503,
            format!("{setting} is not set: replays and resends need it"),
        ),
        OpsAnswer::Conflict(why) => Reply::error(409, why),
        OpsAnswer::EmailFailed(body) => Reply::json(502, body),
        OpsAnswer::Unavailable(e) => {
            lines.push(Line::error("admin call failed").text("detail", &e.to_string()));
            Reply::error(503, "ledger unavailable, retry")
        }
    };
    let line = line.num("status", u64::from(reply.status));
    lines.push(if timed {
        line.num("duration_ms", duration_ms)
    } else {
        line
    });
    (reply, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_ops_outcome_has_its_status_code() {
        let cases = [
            (OpsAnswer::Refused(AdminRefusal::NotFound), 404),
            (OpsAnswer::Refused(AdminRefusal::Unauthorized), 401),
            (
                OpsAnswer::Refused(AdminRefusal::MethodNotAllowed("POST")),
                405,
            ),
            (OpsAnswer::Refused(AdminRefusal::BadRequest("x")), 400),
            (OpsAnswer::Found(json!({})), 200),
            (OpsAnswer::NoSuchEvent, 404),
            (OpsAnswer::NoSuchPurchase, 404),
            (OpsAnswer::SessionUnavailable(json!({})), 502),
            (OpsAnswer::NotConfigured("STRIPE_API_KEY"), 503),
            (OpsAnswer::Conflict("no license yet"), 409),
            (OpsAnswer::EmailFailed(json!({})), 502),
        ];
        for (answer, status) in cases {
            let (reply, lines) = respond(answer.clone(), Line::info("admin call"), 1);
            assert_eq!(reply.status, status, "{answer:?}");
            assert!(lines
                .last()
                .unwrap()
                .to_json()
                .contains(&format!("\"status\":{status}")));
        }
    }

    #[test]
    fn a_405_names_the_allowed_method() {
        let (reply, _) = respond(
            OpsAnswer::Refused(AdminRefusal::MethodNotAllowed("POST")),
            Line::warn("admin refused"),
            0,
        );
        assert_eq!(reply.allow, Some("POST"));
    }
}
