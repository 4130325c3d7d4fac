//! The crash suite: Alice's and Bob's `cairnd` processes on loopback, and an always-on
//! node that holds mail for whichever of them is away. Alice writes a backlog while Bob
//! is away; then both write to each other while one of them (Bob; or, with
//! `CAIRN_CRASH_BOTH=1`, either of them or the always-on node with what it holds for
//! them) is killed with SIGKILL at random moments — while it queues, seals, sends,
//! receives, stores, acknowledges or holds — and started again. Then both run until quiet. Every message must be in its recipient's
//! history exactly once, none may stay *sending* (or end *failed*), and both outboxes
//! must be empty.
//!
//! Size: `CAIRN_CRASH_MESSAGES` each way (default 100), `CAIRN_CRASH_KILLS` (default
//! 25), `CAIRN_CRASH_SEED` to replay a run, `CAIRN_CRASH_WEBRTC=0` to leave direct
//! sessions out. The large run recorded in docs/reliability.md:
//!
//! ```sh
//! CAIRN_CRASH_MESSAGES=1000 CAIRN_CRASH_KILLS=100 CAIRN_CRASH_BOTH=1 \
//!     cargo test --release -p cairnd --test crash -- --nocapture
//! ```

mod common;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use common::{init, run, Running};
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

/// A setting from the environment, or its default.
fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A free TCP port on loopback (a node keeps its port across restarts, so that the
/// other can find it again at the address it learned).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One side of the conversation: its profile, its node while it runs, and the texts
/// it is to write.
struct Side {
    name: &'static str,
    dir: TempDir,
    account: String,
    port: u16,
    node: Option<Running>,
    /// Texts not yet known to be queued.
    to_send: VecDeque<String>,
    /// Texts written as `send` commands whose answer has not been read, in order.
    unconfirmed: VecDeque<String>,
    /// Every text this side is to write.
    texts: Vec<String>,
    restarts: usize,
}

impl Side {
    fn new(name: &'static str, count: usize, webrtc: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let account = init(dir.path(), name);
        std::fs::write(
            dir.path().join("cairnd.toml"),
            format!("webrtc = {webrtc}\nwebrtc_udp = [\"127.0.0.1:0\"]\n"),
        )
        .unwrap();
        let texts: Vec<String> = (0..count).map(|i| format!("from-{name}-{i}")).collect();
        Self {
            name,
            dir,
            account,
            port: free_port(),
            node: None,
            to_send: texts.iter().cloned().collect(),
            unconfirmed: VecDeque::new(),
            texts,
            restarts: 0,
        }
    }

    fn start(&mut self, holder: &str) {
        let listen = format!("/ip4/127.0.0.1/tcp/{}", self.port);
        let args = ["--listen", &listen, "--bootstrap", holder, "listen", "--stdin"];
        self.node = Some(Running::start_with_commands(self.dir.path(), &args));
    }

    fn node(&mut self) -> &mut Running {
        self.node.as_mut().expect("running")
    }

    /// Writes the next text to `peer` without waiting for the answer.
    fn send_next(&mut self, peer: &str) {
        if let Some(text) = self.to_send.pop_front() {
            if self.node().write_command(&format!("send {peer} {text}")) {
                self.unconfirmed.push_back(text);
            } else {
                self.to_send.push_front(text);
            }
        }
    }

    /// Reads the answers that arrived: `queued` confirms the oldest unanswered send,
    /// `error` puts it back.
    fn read_answers(&mut self) {
        for line in self.node().drain() {
            if line.starts_with("queued ") {
                self.unconfirmed.pop_front();
            } else if line.starts_with("error ") {
                let text = self.unconfirmed.pop_front().expect("an answer to a send");
                self.to_send.push_back(text);
            }
        }
    }

    /// Kills the node with SIGKILL. Sends not yet answered may or may not have been
    /// queued; [`Side::settle_unconfirmed`] finds out after the restart.
    fn kill(&mut self) {
        if let Some(node) = self.node.take() {
            node.kill();
        }
        self.restarts += 1;
    }

    /// After a restart: a send that was not answered before the kill was queued if
    /// the history shows it; otherwise it is sent again.
    fn settle_unconfirmed(&mut self, peer: &str) {
        if self.unconfirmed.is_empty() {
            return;
        }
        let history = self.history_of(peer);
        for text in std::mem::take(&mut self.unconfirmed) {
            if !history.values().any(|m| m.outgoing && m.text == text) {
                self.to_send.push_front(text);
            }
        }
    }

    /// The conversation with `peer`, by message id, from the running node.
    fn history_of(&mut self, peer: &str) -> BTreeMap<String, Line> {
        let lines = self
            .node()
            .command(&format!("history {peer}"), Duration::from_secs(30))
            .expect("history answers");
        parse_history(&lines)
    }

    fn outbox_len(&mut self) -> usize {
        self.node()
            .command("outbox", Duration::from_secs(30))
            .expect("outbox answers")
            .len()
    }
}

/// One line of `history`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    outgoing: bool,
    state: String,
    text: String,
}

/// `history ID in|out STATE TEXT` lines by id; an id listed twice fails the test.
fn parse_history(lines: &[String]) -> BTreeMap<String, Line> {
    let mut messages = BTreeMap::new();
    for line in lines {
        let mut words = line.splitn(5, ' ');
        let (Some("history"), Some(id), Some(direction), Some(state), Some(text)) =
            (words.next(), words.next(), words.next(), words.next(), words.next())
        else {
            panic!("not a history line: {line:?}");
        };
        let message = Line {
            outgoing: direction == "out",
            state: state.to_owned(),
            text: text.to_owned(),
        };
        assert!(
            messages.insert(id.to_owned(), message).is_none(),
            "message {id} listed twice"
        );
    }
    messages
}

/// Whether everything `from` sent is in `to`'s history and delivered.
fn all_through(from: &BTreeMap<String, Line>, to: &BTreeMap<String, Line>) -> bool {
    from.iter().filter(|(_, m)| m.outgoing).all(|(id, m)| {
        matches!(m.state.as_str(), "delivered" | "read") && to.get(id).is_some_and(|r| !r.outgoing && r.text == m.text)
    })
}

#[test]
fn messages_survive_sigkills_of_either_side_at_random_moments_each_arriving_exactly_once() {
    let count: usize = setting("CAIRN_CRASH_MESSAGES", 100);
    let kills: usize = setting("CAIRN_CRASH_KILLS", 25);
    let both: bool = setting::<u8>("CAIRN_CRASH_BOTH", 0) == 1;
    let webrtc: bool = setting::<u8>("CAIRN_CRASH_WEBRTC", 1) == 1;
    let seed: u64 = setting("CAIRN_CRASH_SEED", rand::random());
    let quiet_for = Duration::from_secs(setting("CAIRN_CRASH_QUIET_SECS", 300));
    println!(
        "crash suite: {count} messages each way, {kills} kills of {}, seed {seed}",
        if both { "either side" } else { "Bob" }
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();

    // The always-on node: the other side's mail waits there while one is away.
    let holder_dir = tempfile::tempdir().unwrap();
    init(holder_dir.path(), "Holder");
    let holder_listen = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let holder_args = ["--listen", &holder_listen, "--no-webrtc", "node"];
    let mut holder = Running::start(None, holder_dir.path(), &holder_args);
    let holder_address = holder.line_starting("address ");
    let mut holder_restarts = 0;

    let mut alice = Side::new("Alice", count, webrtc);
    let mut bob = Side::new("Bob", count, webrtc);
    alice.start(&holder_address);
    let invite = alice.node().line_starting("invite ");
    run(bob.dir.path(), &["add-contact", &invite]);
    bob.start(&holder_address);
    let bob_id = alice.node().line_starting("contact ");
    assert!(bob_id.starts_with(&bob.account));
    let ids = [alice.account.clone(), bob.account.clone()];
    let mut sides = [alice, bob];

    // Bob is away while Alice writes the first two fifths of her texts: they wait for
    // him with the always-on node, sealed.
    sides[1].node.take();
    for _ in 0..count * 2 / 5 {
        let text = sides[0].to_send.pop_front().unwrap();
        let answer = sides[0]
            .node()
            .command(&format!("send {} {text}", ids[1]), Duration::from_secs(30));
        assert!(answer.is_some(), "Alice could not queue {text}");
    }
    std::thread::sleep(Duration::from_secs(3));
    sides[1].start(&holder_address);

    // Writing and killing: `kills` stretches of 0.2–1.5 s, the texts spread over them.
    for kill in 0..kills {
        let stretch = Duration::from_millis(rng.random_range(200..1500));
        let end = Instant::now() + stretch;
        let share = |side: &Side| side.to_send.len().div_ceil(kills - kill);
        let mut budget = [share(&sides[0]), share(&sides[1])];
        while Instant::now() < end {
            let i = rng.random_range(0..2);
            if budget[i] > 0 {
                budget[i] -= 1;
                let peer = ids[1 - i].clone();
                sides[i].send_next(&peer);
            }
            for side in sides.iter_mut() {
                side.read_answers();
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(5..60)));
        }
        // With both sides killed, the always-on node is killed now and then too, with
        // what it holds for them.
        let victim = if both {
            [0, 0, 1, 1, 2][rng.random_range(0..5)]
        } else {
            1
        };
        if victim == 2 {
            println!("kill {} of {kills}: the always-on node after {stretch:?}", kill + 1);
            holder.kill();
            std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
            holder = Running::start(None, holder_dir.path(), &holder_args);
            holder_restarts += 1;
            continue;
        }
        println!("kill {} of {kills}: {} after {stretch:?}", kill + 1, sides[victim].name);
        sides[victim].kill();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
        sides[victim].start(&holder_address);
        let peer = ids[1 - victim].clone();
        sides[victim].settle_unconfirmed(&peer);
    }

    // Whatever is left to write, written now, each answer awaited.
    for i in 0..2 {
        let answered = Instant::now() + Duration::from_secs(30);
        while !sides[i].unconfirmed.is_empty() {
            assert!(Instant::now() < answered, "{} does not answer", sides[i].name);
            std::thread::sleep(Duration::from_millis(20));
            sides[i].read_answers();
        }
        let peer = ids[1 - i].clone();
        while let Some(text) = sides[i].to_send.pop_front() {
            let answer = sides[i]
                .node()
                .command(&format!("send {peer} {text}"), Duration::from_secs(30));
            assert!(answer.is_some(), "{} could not queue {text}", sides[i].name);
        }
    }
    let written = started.elapsed();
    println!("everything queued after {written:?}; running until quiet");

    // Both run until quiet: outboxes empty, everything delivered both ways.
    let deadline = Instant::now() + quiet_for;
    loop {
        let a = sides[0].history_of(&ids[1]);
        let b = sides[1].history_of(&ids[0]);
        let queued = sides[0].outbox_len() + sides[1].outbox_len();
        if queued == 0 && all_through(&a, &b) && all_through(&b, &a) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not quiet after {quiet_for:?}: {queued} queued, Alice {a:?}, Bob {b:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let quiet = started.elapsed();

    // Stopped, the profiles tell the same from outside: `cairnd history` and `outbox`.
    for side in sides.iter_mut() {
        side.node.take();
    }
    drop(holder);
    let mut twice = 0;
    for i in 0..2 {
        let (me, peer) = (&sides[i], &sides[1 - i]);
        let mine = parse_history(&lines(&run(me.dir.path(), &["history", &peer.account])));
        let theirs = parse_history(&lines(&run(peer.dir.path(), &["history", &me.account])));
        let sent: BTreeMap<&String, &Line> = mine.iter().filter(|(_, m)| m.outgoing).collect();
        let got: BTreeMap<&String, &Line> = theirs.iter().filter(|(_, m)| !m.outgoing).collect();
        assert_eq!(
            sent.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>(),
            "what {} sent is what {} has, by id",
            me.name,
            peer.name
        );
        for (id, m) in &sent {
            assert_eq!(got[id].text, m.text);
            assert!(
                matches!(m.state.as_str(), "delivered" | "read"),
                "{} {id} is {}",
                me.name,
                m.state
            );
        }
        let texts: HashSet<&String> = sent.values().map(|m| &m.text).collect();
        // A kill between queueing a text and answering the command: sent again.
        twice += sent.len() - texts.len();
        assert!(
            me.texts.iter().all(|t| texts.contains(t)),
            "every text {} wrote was queued",
            me.name
        );
        assert_eq!(run(me.dir.path(), &["outbox"]), "", "{}'s outbox is empty", me.name);
    }
    println!(
        "crash suite: {} restarts of Alice, {} of Bob, {holder_restarts} of the always-on node; written in {:.1} s, quiet after {:.1} s; {twice} texts queued twice",
        sides[0].restarts,
        sides[1].restarts,
        written.as_secs_f64(),
        quiet.as_secs_f64()
    );
}

fn lines(output: &str) -> Vec<String> {
    output.lines().map(str::to_owned).collect()
}
