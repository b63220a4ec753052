//! Awaiting the hot path's JavaScript promises (the body, D1's claim, SubtleCrypto)
//! without `JsFuture`'s two wasm-bindgen closures per promise: see [`settled`]. The
//! executor of `entry` polls a request right inside [`settled`]'s callback
//! ([`take_inline`]).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use wasm_bindgen::prelude::{wasm_bindgen, Closure};
use wasm_bindgen::{JsCast, JsValue};
use worker::js_sys;

/// Awaits a JavaScript promise on the hot path (the body, D1's claim, SubtleCrypto)
/// without `JsFuture`'s two wasm-bindgen closures per promise (each made, registered
/// for finalisation, unregistered and destroyed across the boundary): the promise calls
/// one closure made once per isolate, with this await's slot.
pub fn settled(promise: &js_sys::Promise) -> Settled {
    let slot = Rc::new(Slot::default());
    let id = SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        match slots.iter().position(Option::is_none) {
            Some(free) => {
                slots[free] = Some(slot.clone());
                free
            }
            None => {
                slots.push(Some(slot.clone()));
                slots.len() - 1
            }
        }
    });
    SETTLE.with(|settle| settle_on(promise, settle.as_ref(), id as u32));
    Settled(slot)
}

// One crossing per await: the promise's two callbacks are made in JavaScript (plain
// arrows around `settle`), not bound from Rust one call at a time.
#[wasm_bindgen(
    inline_js = "export function settle_on(p, settle, id) { p.then((v) => settle(id, true, v), (e) => settle(id, false, e)); }"
)]
extern "C" {
    fn settle_on(promise: &js_sys::Promise, settle: &JsValue, id: u32);
}

#[wasm_bindgen]
extern "C" {
    /// A promise, for `then(on_ok, on_err)` with plain functions.
    type Thenable;
    #[wasm_bindgen(method, js_name = then)]
    fn then_fns(this: &Thenable, on_ok: &JsValue, on_err: &JsValue);
}

/// `promise.then(on_ok, on_err)`, with plain functions (or `undefined`).
pub fn then(promise: &js_sys::Promise, on_ok: &JsValue, on_err: &JsValue) {
    promise.unchecked_ref::<Thenable>().then_fns(on_ok, on_err);
}

/// Whether the wake under way comes from [`settled`]'s callback, which stored the value
/// before waking, so that the woken task may poll at once; asked once per wake.
pub fn take_inline() -> bool {
    INLINE.with(|inline| inline.replace(false))
}

#[derive(Default)]
struct Slot {
    result: RefCell<Option<Result<JsValue, JsValue>>>,
    waker: RefCell<Option<Waker>>,
}

thread_local! {
    /// Set by [`SETTLE`] around its wake: that one wake may poll at once
    /// ([`take_inline`]).
    static INLINE: Cell<bool> = const { Cell::new(false) };
    /// The awaits in flight, by the id their callbacks are bound to.
    static SLOTS: RefCell<Vec<Option<Rc<Slot>>>> = const { RefCell::new(Vec::new()) };
    /// What every awaited promise calls: `(id, fulfilled, value)`.
    static SETTLE: Closure<dyn Fn(u32, bool, JsValue)> = Closure::new(|id: u32, ok: bool, value| {
        let slot = SLOTS.with(|slots| slots.borrow_mut().get_mut(id as usize).and_then(Option::take));
        if let Some(slot) = slot {
            *slot.result.borrow_mut() = Some(if ok { Ok(value) } else { Err(value) });
            let waker = slot.waker.borrow_mut().take();
            if let Some(waker) = waker {
                // The value is in place: the waker's task may poll right here.
                INLINE.with(|inline| inline.set(true));
                waker.wake();
                INLINE.with(|inline| inline.set(false));
            }
        }
    });
}

/// The future of [`settled`]: the promise's value, or what it was rejected with.
pub struct Settled(Rc<Slot>);

impl Future for Settled {
    type Output = Result<JsValue, JsValue>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(result) = self.0.result.borrow_mut().take() {
            return Poll::Ready(result);
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}
