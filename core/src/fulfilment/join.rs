//! Runs futures side by side on the Worker's single thread: each is polled in turn
//! until all are ready, so the independent steps of a purchase wait on their services
//! at the same time (license ∥ shipping) instead of one after the other.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

/// Every future's output, in the order given.
pub async fn all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut running: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = running.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut ready = true;
        for (future, output) in running.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => ready = false,
                }
            }
        }
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future is ready"))
        .collect()
}

/// Two futures of different kinds side by side: both outputs, once both are ready.
pub async fn both<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    let (mut out_a, mut out_b) = (None, None);
    poll_fn(|cx| {
        if out_a.is_none() {
            if let Poll::Ready(value) = a.as_mut().poll(cx) {
                out_a = Some(value);
            }
        }
        if out_b.is_none() {
            if let Poll::Ready(value) = b.as_mut().poll(cx) {
                out_b = Some(value);
            }
        }
        if out_a.is_some() && out_b.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    (
        out_a.expect("the first future is ready"),
        out_b.expect("the second future is ready"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Ready on the second poll, recording when it was polled.
    async fn step(name: &'static str, log: &RefCell<Vec<String>>) -> &'static str {
        log.borrow_mut().push(format!("{name} start"));
        let mut polled = false;
        poll_fn(|cx| {
            if polled {
                Poll::Ready(())
            } else {
                polled = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await;
        log.borrow_mut().push(format!("{name} end"));
        name
    }

    #[test]
    fn every_future_starts_before_any_finishes_and_outputs_keep_their_order() {
        let log = RefCell::new(Vec::new());
        let out = futures_executor::block_on(all(vec![step("a", &log), step("b", &log)]));
        assert_eq!(out, vec!["a", "b"]);
        assert_eq!(*log.borrow(), vec!["a start", "b start", "a end", "b end"]);
    }

    #[test]
    fn both_starts_each_before_either_finishes_and_keeps_their_order() {
        let log = RefCell::new(Vec::new());
        let out = futures_executor::block_on(both(step("a", &log), async {
            step("b", &log).await.len()
        }));
        assert_eq!(out, ("a", 1));
        assert_eq!(*log.borrow(), vec!["a start", "b start", "a end", "b end"]);
    }
}
