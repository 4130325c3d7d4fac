//! What SQLCipher costs: 100k message inserts and FTS5 searches over them, on the
//! encrypted profile database versus the same schema and code unencrypted.
//!
//! Run: `cargo bench -p cairn-store --bench store`. Results: docs/benchmarks.md.

use std::path::Path;

use cairn_store::{DbKey, DeliveryState, NewMessage, ProfileDb};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

const ROWS: usize = 100_000;
const WORDS: &[&str] = &[
    "meet", "tomorrow", "coffee", "train", "late", "photo", "garden", "cairn", "hike", "weather", "dinner", "call",
    "later", "ticket", "museum", "river", "bridge", "north", "summit", "lunch", "book", "music", "concert", "station",
    "harbour", "island", "market", "bakery", "film", "paint",
];

/// Deterministic message text: 6–13 words drawn with a linear congruential step.
fn body(i: usize) -> String {
    let mut x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n = 6 + (x % 8) as usize;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            WORDS[(x >> 33) as usize % WORDS.len()]
        })
        .collect::<Vec<_>>()
        .join(" ")
        // One message in a hundred mentions a rare word, the search target.
        + if i.is_multiple_of(100) { " glacier" } else { "" }
}

fn open(path: &Path, encrypted: bool) -> ProfileDb {
    if encrypted {
        ProfileDb::create(path, &DbKey::random()).unwrap()
    } else {
        ProfileDb::create_unencrypted(path).unwrap()
    }
}

fn fill(db: &mut ProfileDb, bodies: &[String]) {
    db.messages().ensure_conversation(b"conv", "Bench", 0).unwrap();
    let alice = cairn_proto::AccountId::from_random([7; 16]);
    let inserted = db
        .messages()
        .insert_all(bodies.iter().enumerate().map(|(i, body)| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            NewMessage {
                id,
                conversation_id: b"conv",
                sender: &alice,
                sent_at: i as i64,
                body,
                state: DeliveryState::Sent,
                outgoing: true,
            }
        }))
        .unwrap();
    assert_eq!(inserted, bodies.len());
}

fn inserts(c: &mut Criterion) {
    let bodies: Vec<String> = (0..ROWS).map(body).collect();
    let mut group = c.benchmark_group("insert_100k_messages");
    group.sample_size(10);
    for (name, encrypted) in [("sqlcipher", true), ("plain_sqlite", false)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |dir| {
                    let mut db = open(&dir.path().join("p.db"), encrypted);
                    fill(&mut db, &bodies);
                    db.checkpoint().unwrap();
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn searches(c: &mut Criterion) {
    let bodies: Vec<String> = (0..ROWS).map(body).collect();
    let mut group = c.benchmark_group("fts_search_over_100k_messages");
    for (name, encrypted) in [("sqlcipher", true), ("plain_sqlite", false)] {
        let dir = tempfile::tempdir().unwrap();
        let mut db = open(&dir.path().join("p.db"), encrypted);
        fill(&mut db, &bodies);
        db.checkpoint().unwrap();
        // A rare word (1,000 hits, 50 returned) and a two-word query over common words.
        group.bench_function(format!("{name}/rare_word"), |b| {
            b.iter(|| assert_eq!(db.messages().search("glacier", 50).unwrap().len(), 50))
        });
        group.bench_function(format!("{name}/two_common_words"), |b| {
            b.iter(|| assert_eq!(db.messages().search("summit harbour", 50).unwrap().len(), 50))
        });
    }
    group.finish();
}

criterion_group!(benches, inserts, searches);
criterion_main!(benches);
