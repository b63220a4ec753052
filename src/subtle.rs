//! HMAC-SHA256 through the platform's SubtleCrypto, for large bodies.
//!
//! workerd's SubtleCrypto is BoringSSL: native, with the CPU's SHA extensions, while
//! our SHA-256 is portable code compiled to wasm. From [`MIN_BYTES`] the native hash
//! wins even with its promise and crossings (since the executor awaits a promise through
//! one closure, that is from 1 KiB: `bench/ab.mjs`, 8 sets at 1 KB, BENCHMARKS.md); below
//! it, and whenever SubtleCrypto fails, the Rust HMAC hashes.
//!
//! Only the tags are computed here. Comparing them with the header's `v1` values
//! (in constant time) and the tolerance stay in `signature::verify_tags`, so there is one
//! verifier, and native tests exercise it. Any JavaScript error returns `None` and the
//! delivery is verified in Rust instead: this is an optimisation, never a second opinion.

use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::js_sys::{Array, JsString, Object, Promise, Reflect, Uint8Array};

use stripe_edge_core::settings::Secret;
use stripe_edge_core::stripe::signature::{self, Tag};

/// Bodies at least this large are hashed by SubtleCrypto.
pub const MIN_BYTES: usize = 1024;

thread_local! {
    /// `globalThis.crypto.subtle` (`None`: none, the Rust HMAC verifies) and the
    /// algorithm's name, looked up once per isolate rather than per delivery.
    static SUBTLE: Option<web_sys::SubtleCrypto> = subtle().ok();
    static HMAC: JsString = JsString::from("HMAC");
    /// Imported HMAC keys, per secret: the settings live as long as the isolate, and
    /// importing costs a promise round trip per secret and delivery.
    static KEYS: std::cell::RefCell<Vec<(Vec<u8>, web_sys::CryptoKey)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A delivery's body in wasm memory. When SubtleCrypto will sign it (from [`MIN_BYTES`],
/// with a readable header), the header's timestamp text and `.` come first in the same
/// buffer, so that the body is not copied a second time to be signed.
pub struct Body {
    buf: Vec<u8>,
    /// Where the body starts in `buf`; `buf[..start]` is the signed prefix (0: none, the
    /// Rust HMAC verifies).
    start: usize,
}

impl Body {
    /// The signed prefix (`t` as the SDK prints it, then `.`) of a body of `len` bytes
    /// under `header`, when SubtleCrypto is to sign it.
    fn prefix(header: Option<&str>, len: usize) -> Option<String> {
        let header = signature::parse_header(header.filter(|_| len >= MIN_BYTES)?).ok()?;
        Some(header.timestamp_text + ".")
    }

    /// Whether a body of `len` bytes under `header` would be signed by SubtleCrypto
    /// (from [`MIN_BYTES`], a readable header, SubtleCrypto present).
    pub fn signs(header: Option<&str>, len: usize) -> bool {
        SUBTLE.with(Option::is_some) && Self::prefix(header, len).is_some()
    }

    /// A body read from the stream (no `Content-Length`): moved as it is, or copied once
    /// behind its prefix.
    pub fn plain(header: Option<&str>, bytes: Vec<u8>) -> Self {
        match Self::prefix(header, bytes.len()) {
            None => Self {
                buf: bytes,
                start: 0,
            },
            Some(prefix) => {
                let mut buf = prefix.into_bytes();
                let start = buf.len();
                buf.extend_from_slice(&bytes);
                Self { buf, start }
            }
        }
    }

    /// Copies a body from JavaScript into wasm, behind its prefix when it has one.
    pub fn read(header: Option<&str>, bytes: &Uint8Array) -> Self {
        let len = bytes.length() as usize;
        let prefix = Self::prefix(header, len).unwrap_or_default();
        let start = prefix.len();
        let mut buf = Vec::with_capacity(start + len);
        buf.extend_from_slice(prefix.as_bytes());
        // Straight into the spare capacity: zero-filling it first cost as much as the copy.
        bytes.copy_to_uninit(&mut buf.spare_capacity_mut()[..len]);
        // SAFETY: `copy_to_uninit` initialised the `len` bytes after the first `start`.
        unsafe { buf.set_len(start + len) };
        Self { buf, start }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// The tags of the signed prefix and the body under each secret, in order; `None` when
/// the body has no prefix (small, or the header unreadable: the verifier reports why) or
/// SubtleCrypto failed.
pub async fn tags(secrets: &[Secret], body: &Body) -> Option<Vec<Tag>> {
    if body.start == 0 {
        return None;
    }
    // SubtleCrypto signs one buffer: `t.` then the raw bytes, as Stripe signed them.
    let subtle = SUBTLE.with(Clone::clone)?;
    let mut tags = Vec::with_capacity(secrets.len());
    for secret in secrets {
        tags.push(sign(&subtle, secret.as_ref(), &body.buf).await.ok()?);
    }
    Some(tags)
}

#[wasm_bindgen]
extern "C" {
    type Subtle;
    /// `subtle.sign(algorithm, key, data)` with the algorithm's name already in
    /// JavaScript; `data` is passed as a view of wasm memory, not copied.
    #[wasm_bindgen(method, catch, js_name = sign)]
    fn sign_named(
        this: &Subtle,
        algorithm: &JsString,
        key: &web_sys::CryptoKey,
        data: &[u8],
    ) -> Result<Promise, JsValue>;
}

/// `globalThis.crypto.subtle`. Read by name: workerd's global is not an instance of
/// `WorkerGlobalScope`, so a checked cast would fail.
fn subtle() -> Result<web_sys::SubtleCrypto, JsValue> {
    let crypto = Reflect::get(&worker::js_sys::global(), &"crypto".into())?;
    if crypto.is_undefined() {
        return Err("no globalThis.crypto".into());
    }
    Ok(crypto.unchecked_into::<web_sys::Crypto>().subtle())
}

async fn sign(subtle: &web_sys::SubtleCrypto, secret: &[u8], data: &[u8]) -> Result<Tag, JsValue> {
    let key = key(subtle, secret).await?;
    let sign = HMAC.with(|hmac| {
        subtle
            .unchecked_ref::<Subtle>()
            .sign_named(hmac, &key, data)
    })?;
    let mac = crate::settle::settled(&sign).await?;
    // An ArrayBuffer of 32 bytes.
    let mac = Uint8Array::new(&mac);
    let mut tag = [0u8; 32];
    if mac.length() != 32 {
        return Err("HMAC-SHA256 is not 32 bytes".into());
    }
    mac.copy_to(&mut tag);
    Ok(tag)
}

/// The HMAC key of `secret`, imported once per isolate.
async fn key(subtle: &web_sys::SubtleCrypto, secret: &[u8]) -> Result<web_sys::CryptoKey, JsValue> {
    let cached = KEYS.with(|keys| {
        let keys = keys.borrow();
        keys.iter()
            .find(|(s, _)| s == secret)
            .map(|(_, k)| k.clone())
    });
    if let Some(key) = cached {
        return Ok(key);
    }
    let algorithm = Object::new();
    Reflect::set(&algorithm, &"name".into(), &"HMAC".into())?;
    Reflect::set(&algorithm, &"hash".into(), &"SHA-256".into())?;
    let usages = Array::of1(&"sign".into());
    let key_data = Uint8Array::from(secret);
    let key = JsFuture::from(
        subtle.import_key_with_object("raw", &key_data, &algorithm, false, &usages)?,
    )
    .await?
    .dyn_into::<web_sys::CryptoKey>()?;
    KEYS.with(|keys| keys.borrow_mut().push((secret.to_vec(), key.clone())));
    Ok(key)
}
