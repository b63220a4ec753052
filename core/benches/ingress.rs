//! Native benchmarks of the ingress hot path (`cargo bench --bench ingress`):
//! signature verification of 1, 10 and 100 KB deliveries against the ceiling (raw
//! HMAC-SHA256 over the same bytes with the same crates, which any verifier must do),
//! and event decoding. Results and the command are in BENCHMARKS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use stripe_edge_core::stripe::event::decode;
use stripe_edge_core::stripe::signature::{sign_header, verify_at};

const SECRET: &str = "whsec_bench_secret";
const T: i64 = 1_700_000_000;

/// A checkout.session.completed event padded with line-item-like metadata to `size` bytes.
fn event_of_size(size: usize) -> Vec<u8> {
    let head = r#"{"id":"evt_bench","object":"event","type":"checkout.session.completed","livemode":false,"api_version":"2025-03-31.basil","created":1700000000,"data":{"object":{"id":"cs_test_bench","object":"checkout.session","payment_status":"paid","metadata":{"slug":"pro"},"customer":"cus_1","payment_intent":"pi_1","customer_details":{"email":"a@example.com","name":"A"},"padding":""#;
    let tail = r#""}}}"#;
    let fill = size.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(fill)).into_bytes()
}

fn raw_hmac(body: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(b"1700000000.");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn verification(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    for kb in [1usize, 10, 100] {
        let body = event_of_size(kb * 1024);
        let header = sign_header(SECRET, T, &body);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("verify_at", format!("{kb}KB")),
            &body,
            |b, body| {
                b.iter(|| {
                    verify_at(Some(black_box(&header)), black_box(body), &[SECRET], 300, T).unwrap()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("raw_hmac_ceiling", format!("{kb}KB")),
            &body,
            |b, body| b.iter(|| raw_hmac(black_box(body))),
        );
    }
    group.finish();
}

fn decoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for kb in [1usize, 10, 100] {
        let body = event_of_size(kb * 1024);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("envelope_and_session", format!("{kb}KB")),
            &body,
            |b, body| {
                b.iter(|| {
                    let event = decode(black_box(body)).unwrap();
                    event.checkout_session().unwrap()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, verification, decoding);
criterion_main!(benches);
