//! The Rust side of `src/entry.mjs`, the Worker's JavaScript entry: [`serve`] takes every
//! HTTP request to [`router::route`], as `#[event(fetch)]` did, and drives it with [`Run`]
//! instead of wasm-bindgen-futures' executor.
//!
//! Why (`bench/profile.mjs`, BENCHMARKS.md "Whole Workers under the same workerd"): the
//! handler worker-build generates constructs a `WorkerEntrypoint` behind two Proxies per
//! request and runs the handler as a task of wasm-bindgen-futures' queue, which costs a
//! `Promise` made from Rust closures, a `queueMicrotask` at the start and after every
//! awaited promise, and a microtask hop each time. [`Run`] polls the request's future at
//! once, and again right inside the callback of a promise awaited through
//! [`settle::settled`]
//! (the body, D1's claim, SubtleCrypto); any other wake (a timer, a `JsFuture`) is
//! polled from a microtask, as wasm-bindgen-futures would.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use wasm_bindgen::prelude::{wasm_bindgen, Closure};
use wasm_bindgen::JsValue;
use worker::js_sys;
use worker::Env;

use crate::{router, settle};

/// An HTTP request (the entry's `fetch`): routed and answered as by the fetch handler;
/// the `Response` goes to `resolve`.
#[wasm_bindgen]
pub fn serve(request: web_sys::Request, env: Env, resolve: js_sys::Function) {
    Run::start(
        Box::pin(async move {
            let response = match router::route(request, env).await {
                Ok(response) => Ok(response),
                Err(e) => router::internal_error(&e),
            };
            // As the fetch handler worker-build generates, for a glue error this late.
            response.map_or_else(|_| JsValue::UNDEFINED, JsValue::from)
        }),
        resolve,
    );
}

/// A webhook delivery the entry read itself (`src/fast_webhook.rs`) whose signature the
/// core verified: recorded and acted on as by [`serve`]; the `Response` goes to `resolve`.
#[wasm_bindgen]
pub fn serve_verified(body: Vec<u8>, env: Env, started: f64, resolve: js_sys::Function) {
    Run::start(
        Box::pin(async move {
            let config = crate::runtime::load_config(&env);
            let input = router::Input::Verified(&body);
            let reply = router::decide(&env, config, input, started as u64).await;
            crate::response::json(reply).map_or_else(|_| JsValue::UNDEFINED, JsValue::from)
        }),
        resolve,
    );
}

/// Drives `job` as [`serve`] drives a request: its output goes to `resolve`.
pub(crate) fn spawn(job: impl Future<Output = JsValue> + 'static, resolve: js_sys::Function) {
    Run::start(Box::pin(job), resolve);
}

/// The entry's own path failed outside any decision (the body could not be read): logged
/// and answered as [`serve`] answers a glue error (`router::internal_error`), the
/// JavaScript error described as workers-rs describes it there.
#[wasm_bindgen]
pub fn failed(error: JsValue) -> JsValue {
    router::internal_error(&worker::Error::from(error))
        .map_or_else(|_| JsValue::UNDEFINED, JsValue::from)
}

/// One request's future, driven without wasm-bindgen-futures' executor: polled at once,
/// and again right inside the callback of a [`settle::settled`] promise that wakes it (which
/// stores the value before waking); other wakes are polled from a microtask, since some
/// futures wake before they are ready to be polled (workers-rs's `Delay` wakes, then
/// marks itself done). Its output goes to the entry's `resolve`. A wake while it is being
/// polled is remembered and polled again after, never re-entered.
struct Run {
    job: RefCell<Option<Pin<Box<dyn Future<Output = JsValue>>>>>,
    resolve: js_sys::Function,
    polling: Cell<bool>,
    woken: Cell<bool>,
}

impl Run {
    fn start(job: Pin<Box<dyn Future<Output = JsValue>>>, resolve: js_sys::Function) {
        Rc::new(Run {
            job: RefCell::new(Some(job)),
            resolve,
            polling: Cell::new(false),
            woken: Cell::new(false),
        })
        .poll();
    }

    /// A wake: polled now when [`settle::settled`]'s callback asks for it, else deferred.
    fn wake(self: &Rc<Self>) {
        if settle::take_inline() {
            self.poll();
            return;
        }
        let first = DEFERRED.with(|deferred| {
            let mut deferred = deferred.borrow_mut();
            deferred.push(self.clone());
            deferred.len() == 1
        });
        if first {
            DRAIN.with(|drain| {
                let resolved = js_sys::Promise::resolve(&JsValue::UNDEFINED);
                settle::then(&resolved, drain.as_ref(), &JsValue::UNDEFINED);
            });
        }
    }

    fn poll(self: &Rc<Self>) {
        if self.polling.replace(true) {
            self.woken.set(true);
            return;
        }
        let waker = waker(self);
        let mut cx = Context::from_waker(&waker);
        loop {
            self.woken.set(false);
            let output = {
                let mut job = self.job.borrow_mut();
                match job.as_mut().map(|f| f.as_mut().poll(&mut cx)) {
                    Some(Poll::Ready(output)) => {
                        *job = None;
                        Some(output)
                    }
                    // Pending, or done already (a late wake).
                    _ => None,
                }
            };
            if let Some(output) = output {
                self.polling.set(false);
                let _ = self.resolve.call1(&JsValue::UNDEFINED, &output);
                return;
            }
            if !self.woken.get() {
                self.polling.set(false);
                return;
            }
        }
    }
}

thread_local! {
    /// `Run`s woken other than by [`settle::settled`], polled by [`DRAIN`] from one
    /// microtask.
    static DEFERRED: RefCell<Vec<Rc<Run>>> = const { RefCell::new(Vec::new()) };
    static DRAIN: Closure<dyn Fn()> = Closure::new(|| {
        let runs = DEFERRED.with(|deferred| std::mem::take(&mut *deferred.borrow_mut()));
        for run in runs {
            run.poll();
        }
    });
}

/// A `Waker` holding a reference to its `Run` (single-threaded: the `Rc` never leaves
/// the isolate's thread).
fn waker(run: &Rc<Run>) -> Waker {
    unsafe fn clone(data: *const ()) -> RawWaker {
        Rc::increment_strong_count(data as *const Run);
        RawWaker::new(data, &VTABLE)
    }
    unsafe fn wake(data: *const ()) {
        Rc::from_raw(data as *const Run).wake();
    }
    unsafe fn wake_by_ref(data: *const ()) {
        std::mem::ManuallyDrop::new(Rc::from_raw(data as *const Run)).wake();
    }
    unsafe fn drop(data: *const ()) {
        Rc::decrement_strong_count(data as *const Run);
    }
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop);
    let data = Rc::into_raw(run.clone()) as *const ();
    // SAFETY: the vtable's functions treat `data` as the `Rc<Run>` made just above, and
    // every waker stays on this thread (wasm32 without threads).
    unsafe { Waker::from_raw(RawWaker::new(data, &VTABLE)) }
}
