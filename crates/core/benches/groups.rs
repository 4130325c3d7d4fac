//! What group operations cost at 10, 100, 500 and 1000 member devices, through openmls
//! alone and through Cairn.
//!
//! - *openmls alone*: the group lives in memory (openmls's `MlsGroup` over a memory
//!   storage, with Cairn's crypto provider: `openmls_rust_crypto` cannot be built
//!   beside libsignal here), and the operation is timed by itself.
//! - *openmls + its SQLite storage*: the same, with the state in openmls's own
//!   `openmls_sqlite_storage` (JSON codec) on an SQLCipher file with the profile's
//!   settings (WAL, secure delete), the operation and its writes in one transaction:
//!   what persisting costs without Cairn's design.
//! - *Cairn*: what the messenger does for the same operation with the group already
//!   open (it keeps groups decoded between operations): the operation, then, in one
//!   SQLCipher transaction, the state entries it changed, the values they replaced
//!   (to return to the epoch before a commit, should a concurrent one win) and the
//!   group's row. Opening a group from the database is timed on its own ("load").
//!
//! Operations: **add** (an admin adds one device: commit and Welcome), **commit** (an
//! admin removes one device) and **process** (another member applies that commit).
//!
//! Run: `cargo bench -p cairn-core --bench groups` (add `-- --quick` for 10 and 100
//! only). It prints a table of medians; results are in docs/benchmarks.md.

use std::time::{Duration, Instant};

use cairn_crypto::{Group, GroupIdentity, GroupProvider, GroupState, LeafName};
use cairn_store::{DbKey, GroupRecord, ProfileDb};

const GROUP_ID: &str = "g0123456789abcdef0123456789abcdef";

fn leaf(n: usize) -> LeafName {
    LeafName {
        account_id: cairn_proto::AccountId::from_random((n as u128).to_be_bytes()),
        device_id: cairn_proto::DeviceId::FIRST,
    }
}

/// A device: its group identity and the state holding its key package.
struct Device {
    identity: GroupIdentity,
    state: GroupState,
    key_package: Vec<u8>,
}

impl Device {
    fn new(n: usize) -> Self {
        let identity = GroupIdentity::generate(leaf(n)).unwrap();
        let state = GroupState::new();
        let key_package = identity.key_package(&state.provider()).unwrap();
        Self {
            identity,
            state,
            key_package,
        }
    }
}

/// A group of `size` devices as its admin and one other member hold it, and a
/// device waiting to be added.
struct Setup {
    admin: Device,
    admin_state: Vec<u8>,
    member: Device,
    member_state: Vec<u8>,
    newcomer: Device,
    /// The device the commit removes.
    removed: LeafName,
    /// The key packages of the devices beyond the admin and the member.
    others: Vec<Vec<u8>>,
}

fn setup(size: usize) -> Setup {
    let admin = Device::new(0);
    let member = Device::new(1);
    let others: Vec<Device> = (2..size).map(Device::new).collect();
    let state = GroupState::new();
    let mut group = Group::create(&state.provider(), &admin.identity, GROUP_ID.as_bytes()).unwrap();
    let mut packages = vec![member.key_package.clone()];
    packages.extend(others.iter().map(|d| d.key_package.clone()));
    let (_, welcome) = group.add(&state.provider(), &admin.identity, &packages).unwrap();
    Group::join(&member.state.provider(), &welcome).unwrap();
    Setup {
        admin_state: state.to_bytes().unwrap().to_vec(),
        member_state: member.state.to_bytes().unwrap().to_vec(),
        admin,
        member,
        newcomer: Device::new(size),
        removed: leaf(size - 1),
        others: others.iter().map(|d| d.key_package.clone()).collect(),
    }
}

/// openmls's own SQLite storage, JSON-encoded (its usual codec).
#[derive(Default)]
struct Json;

impl openmls_sqlite_storage::Codec for Json {
    type Error = serde_json::Error;
    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }
    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

type Sqlite<'c> = openmls_sqlite_storage::SqliteStorageProvider<Json, &'c rusqlite::Connection>;

const SQLCIPHER_KEY: &str = "x'2f6f9f2f6f9f2f6f9f2f6f9f2f6f9f2f6f9f2f6f9f2f6f9f2f6f9f2f6f9f2f6f'";

/// An SQLCipher connection set up as a profile's is.
fn sqlcipher(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "key", SQLCIPHER_KEY).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "secure_delete", "ON").unwrap();
    conn
}

/// The same group as `setup` builds, for an admin and a member whose states live in
/// openmls's SQLite storage: the two database files (to copy before each run) and
/// the admin's identity.
fn setup_sqlite(dir: &std::path::Path, others: &[Vec<u8>]) -> (std::path::PathBuf, std::path::PathBuf, GroupIdentity) {
    let (admin_path, member_path) = (dir.join("admin-openmls.db"), dir.join("member-openmls.db"));
    let (mut admin_conn, mut member_conn) = (sqlcipher(&admin_path), sqlcipher(&member_path));
    for conn in [&mut admin_conn, &mut member_conn] {
        openmls_sqlite_storage::SqliteStorageProvider::<Json, &mut rusqlite::Connection>::new(conn)
            .run_migrations()
            .unwrap();
    }
    let (admin_storage, member_storage) = (Sqlite::new(&admin_conn), Sqlite::new(&member_conn));
    let (admin, member) = (
        GroupIdentity::generate(leaf(0)).unwrap(),
        GroupIdentity::generate(leaf(1)).unwrap(),
    );
    let member_package = member.key_package(&GroupProvider::new(&member_storage)).unwrap();
    let provider = GroupProvider::new(&admin_storage);
    let mut group = Group::create(&provider, &admin, GROUP_ID.as_bytes()).unwrap();
    let mut packages = vec![member_package];
    packages.extend(others.iter().cloned());
    let (_, welcome) = group.add(&provider, &admin, &packages).unwrap();
    Group::join(&GroupProvider::new(&member_storage), &welcome).unwrap();
    (admin_path, member_path, admin)
}

/// A fresh copy of a database file set up by `setup_sqlite`, opened.
fn fresh_sqlite(path: &std::path::Path) -> rusqlite::Connection {
    let run = path.with_extension("run.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", run.display()));
    }
    let conn = sqlcipher(path);
    conn.execute("VACUUM INTO ?1", [run.to_str().unwrap()]).unwrap();
    drop(conn);
    sqlcipher(&run)
}

/// An operation with its writes in one transaction on openmls's SQLite storage.
fn in_transaction<T>(conn: &rusqlite::Connection, operation: impl FnOnce(&GroupProvider<'_, Sqlite<'_>>) -> T) -> T {
    conn.execute_batch("BEGIN").unwrap();
    let storage = Sqlite::new(conn);
    let result = operation(&GroupProvider::new(&storage));
    conn.execute_batch("COMMIT").unwrap();
    result
}

/// A profile database holding the group's row and state.
fn profile_with(dir: &tempfile::TempDir, name: &str, state: &mut GroupState) -> ProfileDb {
    let db = ProfileDb::create(&dir.path().join(name), &DbKey::random()).unwrap();
    db.groups().save(&record()).unwrap();
    state.mark_unsaved();
    db.groups()
        .write_state(GROUP_ID, &state.take_changes().unwrap())
        .unwrap();
    db
}

fn record() -> GroupRecord {
    GroupRecord {
        group_id: GROUP_ID.into(),
        name: "bench".into(),
        admins: vec![leaf(0).account_id],
        epoch: 1,
        last_commit: Some(vec![0; 32]),
        redo: None,
        active: true,
        created_at: 0,
    }
}

/// Cairn's path around one operation on an open group: operate, then store what
/// changed (and what it replaced) with the group's row, in one transaction.
fn through_cairn<T>(db: &ProfileDb, state: &mut GroupState, operation: impl FnOnce(&GroupState) -> T) -> T {
    let result = operation(state);
    db.begin().unwrap();
    let changes = state.take_changes().unwrap();
    db.groups().write_state(GROUP_ID, &changes).unwrap();
    db.groups().remember_undo(GROUP_ID, &changes, true).unwrap();
    db.groups().save(&record()).unwrap();
    db.commit().unwrap();
    result
}

/// A group opened from its saved bytes, as if just stored.
fn open(bytes: &[u8]) -> (GroupState, Group) {
    let state = GroupState::from_bytes(bytes).unwrap();
    let group = Group::load(&state.provider(), GROUP_ID.as_bytes()).unwrap().unwrap();
    (state, group)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Times `runs` fresh runs of an operation: `prepare` (untimed) then `timed`.
fn time<P>(runs: usize, mut prepare: impl FnMut() -> P, mut timed: impl FnMut(P)) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let prepared = prepare();
                let start = Instant::now();
                timed(prepared);
                start.elapsed()
            })
            .collect(),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[usize] = if quick { &[10, 100] } else { &[10, 100, 500, 1000] };
    println!("| devices | operation | openmls alone (memory) | openmls + its SQLite storage | Cairn | Cairn / memory | Cairn / openmls SQLite |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for &size in sizes {
        let s = setup(size);
        let runs = if size >= 500 { 11 } else { 31 };
        let dir = tempfile::tempdir().unwrap();
        let admin_db = profile_with(&dir, "admin.db", &mut open(&s.admin_state).0);
        let member_db = profile_with(&dir, "member.db", &mut open(&s.member_state).0);
        let newcomer = [s.newcomer.key_package.clone()];
        let removed = [s.removed.clone()];
        let identity = &s.admin.identity;

        let add_alone = time(
            runs,
            || open(&s.admin_state),
            |(state, mut group)| {
                group.add(&state.provider(), identity, &newcomer).unwrap();
            },
        );
        let (admin_file, member_file, sqlite_admin) = setup_sqlite(dir.path(), &s.others);
        let load_sqlite = |path: &std::path::Path| {
            let conn = fresh_sqlite(path);
            Group::load(&GroupProvider::new(&Sqlite::new(&conn)), GROUP_ID.as_bytes()).unwrap();
            conn
        };
        // One operation on a fresh copy of an openmls SQLite database, in a transaction.
        let on_sqlite = |path: &std::path::Path, operation: &dyn Fn(&mut Group, &GroupProvider<'_, Sqlite<'_>>)| {
            time(
                runs,
                || load_sqlite(path),
                |conn| {
                    let mut group = Group::load(&GroupProvider::new(&Sqlite::new(&conn)), GROUP_ID.as_bytes())
                        .unwrap()
                        .unwrap();
                    in_transaction(&conn, |p| operation(&mut group, p));
                },
            )
        };
        // One operation on an open group, stored as the messenger stores it.
        let on_cairn = |bytes: &[u8], db: &ProfileDb, operation: &dyn Fn(&mut Group, &GroupState)| {
            time(
                runs,
                || open(bytes),
                |(mut state, mut group)| through_cairn(db, &mut state, |state| operation(&mut group, state)),
            )
        };
        let add_sqlite = on_sqlite(&admin_file, &|group, p| {
            group.add(p, &sqlite_admin, &newcomer).unwrap();
        });
        let add_cairn = on_cairn(&s.admin_state, &admin_db, &|group, state| {
            group.add(&state.provider(), identity, &newcomer).unwrap();
        });
        let commit_alone = time(
            runs,
            || open(&s.admin_state),
            |(state, mut group)| {
                group.remove(&state.provider(), identity, &removed).unwrap();
            },
        );
        let commit_sqlite = on_sqlite(&admin_file, &|group, p| {
            group.remove(p, &sqlite_admin, &removed).unwrap();
        });
        let commit_cairn = on_cairn(&s.admin_state, &admin_db, &|group, state| {
            group.remove(&state.provider(), identity, &removed).unwrap();
        });
        let (state, mut group) = open(&s.admin_state);
        let commit = group.remove(&state.provider(), identity, &removed).unwrap();
        let process_alone = time(
            runs,
            || open(&s.member_state),
            |(state, mut group)| {
                group.receive(&state.provider(), &commit).unwrap();
            },
        );
        let sqlite_commit = {
            let conn = fresh_sqlite(&admin_file);
            let storage = Sqlite::new(&conn);
            let provider = GroupProvider::new(&storage);
            let mut group = Group::load(&provider, GROUP_ID.as_bytes()).unwrap().unwrap();
            group.remove(&provider, &sqlite_admin, &removed).unwrap()
        };
        let process_sqlite = on_sqlite(&member_file, &|group, p| {
            group.receive(p, &sqlite_commit).unwrap();
        });
        let process_cairn = on_cairn(&s.member_state, &member_db, &|group, state| {
            group.receive(&state.provider(), &commit).unwrap();
        });
        let load = time(
            runs,
            || (),
            |()| {
                let state = GroupState::from_entries(member_db.groups().state(GROUP_ID).unwrap()).unwrap();
                Group::load(&state.provider(), GROUP_ID.as_bytes()).unwrap().unwrap();
            },
        );
        for (operation, alone, sqlite, cairn) in [
            ("add", add_alone, add_sqlite, add_cairn),
            ("commit", commit_alone, commit_sqlite, commit_cairn),
            ("process", process_alone, process_sqlite, process_cairn),
        ] {
            println!(
                "| {size} | {operation} | {} | {} | {} | {:.2}× | {:.2}× |",
                ms(alone),
                ms(sqlite),
                ms(cairn),
                cairn.as_secs_f64() / alone.as_secs_f64(),
                cairn.as_secs_f64() / sqlite.as_secs_f64()
            );
        }
        let floor = time(
            runs,
            || (),
            |()| {
                member_db.begin().unwrap();
                member_db.groups().save(&record()).unwrap();
                member_db.commit().unwrap();
            },
        );
        println!(
            "| {size} | one-row transaction (the floor of any write) | | | {} | | |",
            ms(floor)
        );
        println!(
            "| {size} | load from the profile | | | {} (state {} KiB) | | |",
            ms(load),
            s.member_state.len() / 1024
        );
        let _ = &s.member;
    }
}
