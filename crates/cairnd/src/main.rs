//! `cairnd`: the headless Cairn node. It runs the same core as the desktop app: as an
//! always-on peer (`cairnd node`) and as a command-line client for scripts and tests
//! (`init`, `invite`, `add-contact`, `contacts`, `send`, `history`, `outbox`,
//! `listen`, `safety-number`).
//!
//! Output is one line per fact, `key value…`, so scripts can read it. The profile key
//! comes from `CAIRND_PASSPHRASE` when set (Argon2id), otherwise from the OS keyring.
//! A running node holds its profile; with `--stdin` it takes `send`, `history` and
//! `outbox` as lines on standard input instead, each answer ending in `ok COMMAND`
//! or `error MESSAGE`.
//!
//! Network settings come from flags, then environment variables, then a TOML file
//! (`--config`, or `cairnd.toml` in the profile directory), then defaults; `cairnd
//! config` prints what is in effect.

mod config;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use cairn_core::{AccountId, Courier, Event, KeyVault, Messenger, Multiaddr, Route, SharedMessenger, Unlock};
use cairn_store::ProfileDir;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cairnd", version, about = "Cairn's headless node and command-line client")]
struct Options {
    /// The profile directory.
    #[arg(long, env = "CAIRND_PROFILE_DIR")]
    profile_dir: PathBuf,
    /// Addresses to listen on (repeatable).
    #[arg(long = "listen", env = "CAIRND_LISTEN", value_delimiter = ',')]
    listen: Vec<Multiaddr>,
    /// Peers to dial at start (repeatable).
    #[arg(long = "bootstrap", env = "CAIRND_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// Do not look for peers on the LAN with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Do not open direct WebRTC sessions (envelopes take libp2p streams).
    #[arg(long)]
    no_webrtc: bool,
    /// STUN/TURN server URLs for WebRTC (repeatable).
    #[arg(long = "stun", env = "CAIRND_STUN", value_delimiter = ',')]
    stun: Vec<String>,
    /// Relay connections for other peers (`node` does unless `--no-relay`).
    #[arg(long, conflicts_with = "no_relay")]
    relay: bool,
    /// Do not relay for other peers.
    #[arg(long)]
    no_relay: bool,
    /// Space for other people's sealed envelopes in this node's peer cache, in MiB
    /// (`node`: 2048 unless set; otherwise 64; 0 holds nothing).
    #[arg(long, env = "CAIRND_CACHE_QUOTA")]
    cache_quota: Option<u64>,
    /// A TOML file with network settings (default: `cairnd.toml` in the profile directory).
    #[arg(long, env = "CAIRND_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates the profile and its account.
    Init {
        /// The display name.
        #[arg(long)]
        name: String,
    },
    /// Prints this account's invite link (without addresses; `listen` prints one with).
    Invite,
    /// Adds the person behind an invite link; prints their account id.
    AddContact { link: String },
    /// Lists contacts: `contact ACCOUNT_ID NAME`.
    Contacts,
    /// Queues a text to a contact; it leaves with the next `listen`/`node`.
    Send { account: String, text: String },
    /// The conversation with a contact, one line per message: `history ID in|out
    /// STATE TEXT` (oldest first).
    History { account: String },
    /// What waits to leave: `outbox SEQ ACCOUNT DEVICE KIND MESSAGE|- ATTEMPTS RESENDS`.
    Outbox,
    /// Prints the safety number with a contact.
    SafetyNumber { account: String },
    /// Runs the node: delivers the outbox and prints what arrives, until SIGTERM,
    /// Ctrl-C, or `--for` seconds.
    Listen {
        #[arg(long = "for")]
        seconds: Option<u64>,
        /// Also take commands on standard input (`send ACCOUNT TEXT`, `history
        /// ACCOUNT`, `outbox`), one per line.
        #[arg(long)]
        stdin: bool,
    },
    /// The always-on node: `listen` without a time limit, relaying for other peers and
    /// holding envelopes for offline devices in a large peer cache.
    Node {
        /// Also take commands on standard input, as `listen --stdin`.
        #[arg(long)]
        stdin: bool,
    },
    /// Prints the network settings in effect (flags, environment, file, defaults).
    Config,
}

fn open(dir: &ProfileDir) -> Result<Messenger> {
    Ok(match std::env::var("CAIRND_PASSPHRASE") {
        Ok(passphrase) => Messenger::open_profile(dir, Unlock::Passphrase(&passphrase))?,
        Err(_) => Messenger::open_profile(dir, Unlock::Keyring(&KeyVault::os()?))?,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let options = Options::parse();
    let dir = ProfileDir::new(&options.profile_dir);
    match options.command {
        Command::Init { ref name } => {
            std::fs::create_dir_all(&options.profile_dir)?;
            let mut messenger = match std::env::var("CAIRND_PASSPHRASE") {
                Ok(passphrase) => Messenger::create_profile(&dir, Unlock::Passphrase(&passphrase))?,
                Err(_) => Messenger::create_profile(&dir, Unlock::Keyring(&KeyVault::os()?))?,
            };
            let account = messenger.create_account(name)?;
            println!("account {}", account.account_id);
        }
        Command::Invite => println!("invite {}", open(&dir)?.account_info()?.invite_link),
        Command::AddContact { ref link } => {
            let (contact, _) = open(&dir)?.accept_invite(link)?;
            println!("contact {} {}", contact.account_id, contact.display_name);
        }
        Command::Contacts => {
            for contact in open(&dir)?.contacts()? {
                println!("contact {} {}", contact.account_id, contact.display_name);
            }
        }
        Command::Send { ref account, ref text } => println!("{}", send(&mut open(&dir)?, account, text)?),
        Command::History { ref account } => print_lines(history(&open(&dir)?, account)?),
        Command::Outbox => print_lines(outbox(&open(&dir)?)?),
        Command::SafetyNumber { ref account } => {
            println!(
                "safety-number {}",
                open(&dir)?
                    .safety_number(&AccountId::parse(account)?)?
                    .groups()
                    .join(" ")
            );
        }
        Command::Listen { seconds, stdin } => run(&options, &dir, seconds.map(Duration::from_secs), stdin).await?,
        Command::Node { stdin } => run(&options, &dir, None, stdin).await?,
        Command::Config => print!("{}", config::describe(&config::node_config(&options)?)),
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The transport keys of an account's devices.
fn transport_keys(m: &Messenger, account: &AccountId) -> Result<Vec<[u8; 32]>> {
    Ok(m.device_keys_of(account)?.into_iter().map(|(_, k)| k).collect())
}

/// Prints `route ACCOUNT direct|connected|relayed|away` when how this node reaches
/// the contact (whose devices have `keys`) changed.
fn print_route(courier: &Courier, account: &AccountId, keys: &[[u8; 32]], routes: &mut HashMap<AccountId, Route>) {
    let route = courier.route_to(keys);
    if routes.insert(account.clone(), route) != Some(route) {
        println!("route {account} {}", route.name());
    }
}

fn print_lines(lines: Vec<String>) {
    for line in lines {
        println!("{line}");
    }
}

/// Queues a text: `queued ID`.
fn send(m: &mut Messenger, account: &str, text: &str) -> Result<String> {
    let (message, _) = m.send_text(&AccountId::parse(account)?, text)?;
    Ok(format!("queued {}", hex(&message.id)))
}

/// The conversation with `account`, oldest first: `history ID in|out STATE TEXT`
/// (line breaks in a text written as `\n`).
fn history(m: &Messenger, account: &str) -> Result<Vec<String>> {
    m.contact(&AccountId::parse(account)?)?;
    Ok(m.conversation(account, usize::MAX >> 1)?
        .into_iter()
        .map(|message| {
            let direction = if message.outgoing { "out" } else { "in" };
            let text = message.body.replace('\\', "\\\\").replace('\n', "\\n");
            format!(
                "history {} {direction} {} {text}",
                hex(&message.id),
                message.state.name()
            )
        })
        .collect())
}

/// What waits to leave: `outbox SEQ ACCOUNT DEVICE KIND MESSAGE|- ATTEMPTS RESENDS`.
fn outbox(m: &Messenger) -> Result<Vec<String>> {
    Ok(m.outbox()?
        .into_iter()
        .map(|e| {
            let message = e.message.map_or_else(|| "-".to_owned(), |id| hex(&id));
            format!(
                "outbox {} {} {} {} {message} {} {}",
                e.id.0, e.account_id, e.device_id, e.kind, e.attempts, e.resends
            )
        })
        .collect())
}

/// Answers one line a script sent a running node: the command's lines, then `ok
/// COMMAND`, or `error MESSAGE`.
fn answer(messenger: &SharedMessenger, courier: &Courier, line: &str) -> Vec<String> {
    let mut guard = messenger.lock().unwrap_or_else(|p| p.into_inner());
    let Some(m) = guard.as_mut() else {
        return vec!["error the profile closed".into()];
    };
    let mut words = line.trim().splitn(3, ' ');
    let (command, first, rest) = (words.next().unwrap_or(""), words.next(), words.next());
    let outcome = match (command, first, rest) {
        ("send", Some(account), Some(text)) => send(m, account, text).map(|line| {
            courier.wake();
            vec![line]
        }),
        ("history", Some(account), None) => history(m, account),
        ("outbox", None, None) => outbox(m),
        _ => Err(anyhow::anyhow!(
            "unknown command {line:?} (send ACCOUNT TEXT, history ACCOUNT, outbox)"
        )),
    };
    match outcome {
        Ok(mut lines) => {
            lines.push(format!("ok {command}"));
            lines
        }
        Err(e) => vec![format!("error {e}")],
    }
}

/// Standard input, line by line, read on a thread of its own: a read that blocks must
/// not keep the runtime from shutting down. The channel closes with standard input.
fn read_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (lines, received) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    received
}

/// How long a stopping node may spend handing its cache to other holders.
const HAND_OVER_FOR: Duration = Duration::from_secs(10);

/// Runs the courier and prints what happens (from its events: this node's addresses,
/// new contacts, texts that arrive, direct sessions opening and closing) until told to
/// stop; with `stdin`, also answers the commands that arrive there.
async fn run(options: &Options, dir: &ProfileDir, limit: Option<Duration>, stdin: bool) -> Result<()> {
    let config = config::node_config(options)?;
    let messenger: SharedMessenger = std::sync::Arc::new(std::sync::Mutex::new(Some(open(dir)?)));
    let (events, mut happened) = tokio::sync::mpsc::unbounded_channel();
    let courier = Courier::start(messenger.clone(), config, move |event| {
        let _ = events.send(event);
    })?;
    println!("peer {}", courier.node().peer_id());
    let mut printed_invite = false;
    let mut printed_addresses = HashSet::new();
    let mut known: HashSet<AccountId> = {
        let guard = messenger.lock().unwrap_or_else(|p| p.into_inner());
        let m = guard.as_ref().expect("opened above");
        m.contacts()?.into_iter().map(|c| c.account_id).collect()
    };
    let mut direct = HashSet::new();
    let mut routes: HashMap<AccountId, Route> = HashMap::new();
    let deadline = async {
        match limit {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut commands = if stdin {
        read_lines()
    } else {
        tokio::sync::mpsc::unbounded_channel().1
    };
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            Some(line) = commands.recv() => print_lines(answer(&messenger, &courier, &line)),
            Some(event) = happened.recv() => {
                let guard = messenger.lock().unwrap_or_else(|p| p.into_inner());
                let Some(m) = guard.as_ref() else { bail!("the profile closed") };
                match event {
                    // Where it listens: what people name as their always-on node.
                    Event::AccountChanged => {
                        let addresses = m.invite()?.addresses;
                        if !printed_invite && !addresses.is_empty() {
                            println!("invite {}", m.account_info()?.invite_link);
                            printed_invite = true;
                        }
                        for address in addresses {
                            if printed_addresses.insert(address.clone()) {
                                println!("address {address}");
                            }
                        }
                    }
                    Event::ContactChanged(account) if !known.contains(&account) => {
                        if let Ok(contact) = m.contact(&account) {
                            println!("contact {account} {}", contact.display_name);
                            print_route(&courier, &account, &transport_keys(m, &account)?, &mut routes);
                            known.insert(account);
                        }
                    }
                    // Texts from contacts (not copies of this account's own, nor groups').
                    Event::Message(message) if !message.outgoing && message.sender == *message.conversation => {
                        println!("message {} {}", message.sender, message.body);
                    }
                    Event::PresenceChanged(account) if known.contains(&account) => {
                        let keys = transport_keys(m, &account)?;
                        print_route(&courier, &account, &keys, &mut routes);
                        let now_direct = courier.any_direct(&keys);
                        if now_direct != direct.contains(&account) {
                            println!("direct {account} {}", if now_direct { "open" } else { "closed" });
                            if now_direct {
                                direct.insert(account);
                            } else {
                                direct.remove(&account);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    // What this node holds for offline devices goes to the other holders first, so k
    // copies stay available while it is away.
    match tokio::time::timeout(HAND_OVER_FOR, courier.node().hand_over()).await {
        Ok(Ok(handed)) => println!("handed-over {handed}"),
        Ok(Err(e)) => eprintln!("cairnd: hand-over failed: {e}"),
        Err(_) => eprintln!("cairnd: hand-over did not finish in {HAND_OVER_FOR:?}"),
    }
    // Tell peers at once rather than leave them to time the sessions out.
    courier.node().close_direct_sessions().await;
    Ok(())
}
