//! End-to-end tests of the real desktop app, driven through WebDriver.
//!
//! Each test starts its own `tauri-driver` (which starts WebKitWebDriver, which starts
//! the app binary built by cargo for this test) with its own data directory, so
//! tests run side by side. They need a display (Xvfb), `tauri-driver` and
//! `WebKitWebDriver` on the PATH, and a Secret Service on the session bus: the
//! test command (`./test.sh`) provides all of them.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// The app binary cargo built for this test run.
const APP: &str = env!("CARGO_BIN_EXE_cairn");
/// The longest any one step may take before the test fails instead of hanging.
const STEP: Duration = Duration::from_secs(60);

/// A running `tauri-driver`, stopped with SIGTERM on drop (SIGKILL would orphan
/// WebKitWebDriver and the app).
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    /// Starts tauri-driver with the app's data under `data_home` and extra `env`.
    fn start(data_home: &Path, env: &[(&str, &str)]) -> Result<Self> {
        let port = free_port()?;
        let native_port = free_port()?;
        let driver = std::env::var("CAIRN_TAURI_DRIVER").unwrap_or_else(|_| "tauri-driver".into());
        let mut command = Command::new(&driver);
        command
            .args(["--port", &port.to_string(), "--native-port", &native_port.to_string()])
            .env("XDG_DATA_HOME", data_home)
            // Loopback only, no multicast: nothing leaves this machine.
            .env("CAIRN_LISTEN", "/ip4/127.0.0.1/tcp/0")
            .env("CAIRN_WEBRTC_UDP", "127.0.0.1:0")
            .env("CAIRN_MDNS", "0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {driver}: run the suite through ./test.sh"))?;
        Ok(Self { child, port })
    }

    /// Launches the app for `profile` and connects a WebDriver session to it.
    async fn launch(&self, profile: &str) -> Result<Client> {
        let mut caps = serde_json::Map::new();
        // No browserName: tauri-driver would refuse it.
        caps.insert(
            "tauri:options".into(),
            json!({ "application": app_binary(), "args": ["--profile", profile] }),
        );
        let url = format!("http://127.0.0.1:{}", self.port);
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            match ClientBuilder::native().capabilities(caps.clone()).connect(&url).await {
                Ok(client) => {
                    // Room for the invite QR code at three pixels a module.
                    client.set_window_size(1200, 1000).await?;
                    return Ok(client);
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    note(&format!("waiting for tauri-driver: {e}"));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => bail!("no WebDriver session after {STEP:?}: {e}"),
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The app to launch: `$CAIRN_E2E_APP` when set (say, a wrapper script that keeps the
/// app's log in a file), else the binary cargo built.
fn app_binary() -> String {
    std::env::var("CAIRN_E2E_APP").unwrap_or_else(|_| APP.into())
}

fn note(message: &str) {
    if std::env::var_os("CAIRN_E2E_VERBOSE").is_some() {
        eprintln!("{message}");
    }
}

/// Saves a screenshot as `NAME.png` under `$CAIRN_E2E_SCREENSHOTS`, when it is set,
/// for a person to look at what the app showed.
async fn screenshot(client: &Client, name: &str) -> Result<()> {
    if let Some(dir) = std::env::var_os("CAIRN_E2E_SCREENSHOTS") {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), client.screenshot().await?)?;
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits for the element with `data-testid` = `test_id`.
async fn element(client: &Client, test_id: &str) -> Result<fantoccini::elements::Element> {
    client
        .wait()
        .at_most(STEP)
        .for_element(Locator::Css(&format!("[data-testid='{test_id}']")))
        .await
        .with_context(|| format!("waiting for [data-testid='{test_id}']"))
}

async fn text_of(client: &Client, test_id: &str) -> Result<String> {
    Ok(element(client, test_id).await?.text().await?)
}

async fn fill(client: &Client, test_id: &str, text: &str) -> Result<()> {
    Ok(element(client, test_id).await?.send_keys(text).await?)
}

async fn click(client: &Client, test_id: &str) -> Result<()> {
    client
        .find(Locator::Css(&format!("[data-testid='{test_id}']")))
        .await?
        .click()
        .await?;
    Ok(())
}

/// Sets a field's value at once, as a paste does, and lets the UI see it.
async fn paste(client: &Client, test_id: &str, text: &str) -> Result<()> {
    element(client, test_id).await?;
    client
        .execute(
            "const el = document.querySelector(`[data-testid='${arguments[0]}']`);
             el.value = arguments[1];
             el.dispatchEvent(new Event('input', { bubbles: true }));",
            vec![json!(test_id), json!(text)],
        )
        .await?;
    Ok(())
}

/// The full text of an element, including what its box clips.
async fn full_text(client: &Client, test_id: &str) -> Result<String> {
    Ok(element(client, test_id)
        .await?
        .prop("textContent")
        .await?
        .unwrap_or_default())
}

/// Adds a contact by pasting their invite link; returns the safety number shown.
async fn add_contact_and_read_safety_number(client: &Client, link: &str, name: &str) -> Result<String> {
    click(client, "add-contact").await?;
    paste(client, "invite-input", link).await?;
    click(client, "accept-invite").await?;
    assert_eq!(text_of(client, "conversation-title").await?, name);
    click(client, "open-safety-number").await?;
    let digits = full_text(client, "safety-digits").await?;
    Ok(digits.chars().filter(char::is_ascii_digit).collect())
}

async fn is_shown(client: &Client, test_id: &str) -> Result<bool> {
    Ok(!client
        .find_all(Locator::Css(&format!("[data-testid='{test_id}']")))
        .await?
        .is_empty())
}

/// Onboards a fresh profile and returns the account id the app shows.
async fn onboard(client: &Client, name: &str) -> Result<String> {
    fill(client, "display-name", name).await?;
    click(client, "create-account").await?;
    let account_id = text_of(client, "account-id").await?;
    assert_eq!(text_of(client, "display-name-shown").await?, name);
    Ok(account_id)
}

fn assert_account_id_shape(id: &str) {
    assert_eq!(id.len(), 26, "account id {id:?}");
    assert!(
        id.chars().all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)),
        "{id:?}"
    );
}

async fn with_timeout<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(300), work)
        .await
        .context("end-to-end test timed out")?
}

#[tokio::test(flavor = "multi_thread")]
async fn alice_creates_a_profile_and_relaunching_opens_it_without_asking() -> Result<()> {
    with_timeout(async {
        let data = tempfile::tempdir()?;
        let driver = Driver::start(data.path(), &[])?;

        let app = driver.launch("alice").await?;
        text_of(&app, "display-name").await?;
        screenshot(&app, "onboarding").await?;
        let account_id = onboard(&app, "Alice").await?;
        screenshot(&app, "home").await?;
        assert_account_id_shape(&account_id);
        let invite = full_text(&app, "invite-link").await?;
        assert!(invite.starts_with("cairn://invite/"), "{invite}");
        // (The code is drawn again when the invite gains the node's addresses: look
        // again if the one found is replaced meanwhile.)
        let mut shown = false;
        for _ in 0..20 {
            let qr = app.find(Locator::Css("[data-testid='invite-qr'] svg")).await?;
            if let Ok(displayed) = qr.is_displayed().await {
                shown = displayed;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(shown, "the invite QR code is visible");
        app.close().await?;

        let app = driver.launch("alice").await?;
        assert_eq!(
            text_of(&app, "account-id").await?,
            account_id,
            "same account after relaunch"
        );
        assert!(!is_shown(&app, "display-name").await?, "no onboarding on relaunch");
        assert!(
            !is_shown(&app, "passphrase").await?,
            "no passphrase prompt: key from the keyring"
        );
        app.close().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_profile_runs_beside_the_first() -> Result<()> {
    with_timeout(async {
        let data = tempfile::tempdir()?;
        let alice_driver = Driver::start(data.path(), &[])?;
        let bob_driver = Driver::start(data.path(), &[])?;

        let alice = alice_driver.launch("alice").await?;
        let alice_id = onboard(&alice, "Alice").await?;
        let bob = bob_driver.launch("bob").await?;
        let bob_id = onboard(&bob, "Bob").await?;

        assert_ne!(alice_id, bob_id);
        // Both windows are alive at once, each on its own profile.
        assert_eq!(text_of(&alice, "account-id").await?, alice_id);
        assert_eq!(text_of(&bob, "account-id").await?, bob_id);
        assert!(data.path().join("cairn/profiles/alice/profile.db").exists());
        assert!(data.path().join("cairn/profiles/bob/profile.db").exists());
        alice.close().await?;
        bob.close().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_keyring_the_profile_is_locked_by_a_passphrase() -> Result<()> {
    with_timeout(async {
        let data = tempfile::tempdir()?;
        // A session bus address that leads nowhere: no Secret Service to be found.
        let no_keyring = [("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/cairn-bus")];
        let driver = Driver::start(data.path(), &no_keyring)?;

        let app = driver.launch("carol").await?;
        fill(&app, "display-name", "Carol").await?;
        fill(&app, "new-passphrase", "correct horse battery").await?;
        click(&app, "create-account").await?;
        let account_id = text_of(&app, "account-id").await?;
        app.close().await?;

        let app = driver.launch("carol").await?;
        fill(&app, "passphrase", "wrong passphrase").await?;
        click(&app, "unlock").await?;
        let error = text_of(&app, "error").await?;
        screenshot(&app, "wrong-passphrase").await?;
        assert!(
            error.contains("passphrase does not open"),
            "plain-words error, got {error:?}"
        );
        fill(&app, "passphrase", "correct horse battery").await?;
        click(&app, "unlock").await?;
        assert_eq!(
            text_of(&app, "account-id").await?,
            account_id,
            "the wrong try damaged nothing"
        );
        app.close().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_app_instances_exchange_invites_by_paste_and_qr_picture_and_show_the_same_safety_number() -> Result<()> {
    with_timeout(async {
        let data = tempfile::tempdir()?;
        let ((_alice_driver, alice), (_bob_driver, bob)) = onboarded_pair(data.path()).await?;
        let alice_link = full_text(&alice, "invite-link").await?;
        let bob_link = full_text(&bob, "invite-link").await?;

        // The QR code the app shows reads back (rqrr, from a PNG screenshot) as the link.
        // (A screenshot of the whole window: WebKit's element screenshots clip at the fold.)
        let window_png = alice.screenshot().await?;
        screenshot(&alice, "invite").await?;
        assert_eq!(
            cairn_core::read_qr_image(&window_png)?,
            alice_link,
            "the invite QR decodes to the invite"
        );

        // Bob adds Alice from a picture of her QR code (the file picker's input).
        let picture = data.path().join("alice-invite.png");
        std::fs::write(&picture, &window_png)?;
        click(&bob, "add-contact").await?;
        let file_input = bob.find(Locator::Css("[data-testid='qr-file']")).await?;
        file_input.send_keys(&picture.display().to_string()).await?;
        assert_eq!(
            text_of(&bob, "conversation-title").await?,
            "Alice",
            "added from the QR picture"
        );
        click(&bob, "open-safety-number").await?;
        let at_bob: String = full_text(&bob, "safety-digits")
            .await?
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let at_alice = add_contact_and_read_safety_number(&alice, &bob_link, "Bob").await?;
        screenshot(&alice, "safety-number").await?;
        assert_eq!(at_alice.len(), 60, "60 digits: {at_alice}");
        assert_eq!(at_alice, at_bob, "both sides show the same safety number");

        click(&alice, "mark-verified").await?;
        wait_text(&alice, "verified-state", |t| t == "Verified").await?;

        // Alice writes to Bob from the conversation view: the message shows with its state.
        click(&alice, "contact").await?;
        paste(&alice, "message-input", "hello Bob").await?;
        click(&alice, "send").await?;
        assert_eq!(text_of(&alice, "message-body").await?, "hello Bob");
        let state = text_of(&alice, "message-state").await?;
        assert!(
            ["sending", "sent", "delivered", "read"].contains(&state.as_str()),
            "{state}"
        );
        screenshot(&alice, "conversation").await?;

        // A pasted invite that is not one is refused in plain words.
        click(&bob, "add-contact").await?;
        paste(&bob, "invite-input", "cairn://invite/not-an-invite").await?;
        click(&bob, "accept-invite").await?;
        assert!(text_of(&bob, "error").await?.contains("not a valid Cairn invite"));
        alice.close().await?;
        bob.close().await?;
        Ok(())
    })
    .await
}

/// Alice and Bob, each onboarded in an app instance of their own (with its driver).
async fn onboarded_pair(data: &Path) -> Result<((Driver, Client), (Driver, Client))> {
    let (alice_driver, bob_driver) = (Driver::start(data, &[])?, Driver::start(data, &[])?);
    let alice = alice_driver.launch("alice").await?;
    let bob = bob_driver.launch("bob").await?;
    onboard(&alice, "Alice").await?;
    onboard(&bob, "Bob").await?;
    Ok(((alice_driver, alice), (bob_driver, bob)))
}

/// Waits until `test_id`'s text satisfies `done`.
async fn wait_text(client: &Client, test_id: &str, done: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let text = text_of(client, test_id).await.unwrap_or_default();
        if done(&text) {
            return Ok(text);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("[data-testid='{test_id}'] still reads {text:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_app_instances_add_each_other_and_exchange_messages_over_the_network() -> Result<()> {
    with_timeout(async {
        let data = tempfile::tempdir()?;
        let ((_alice_driver, alice), (_bob_driver, bob)) = onboarded_pair(data.path()).await?;
        // Alice's invite carries her node's loopback address once it listens.
        wait_text(&alice, "invite-addresses", |n| n != "0").await?;
        let alice_link = full_text(&alice, "invite-link").await?;

        // Bob adds Alice; his introduction crosses the network and Alice sees him.
        click(&bob, "add-contact").await?;
        paste(&bob, "invite-input", &alice_link).await?;
        click(&bob, "accept-invite").await?;
        assert_eq!(text_of(&bob, "conversation-title").await?, "Alice");
        let bob_in_alices_list = element(&alice, "contact").await?;
        assert_eq!(bob_in_alices_list.attr("data-name").await?.as_deref(), Some("Bob"));
        wait_attr(&alice, "contact", "data-online", "true").await?;
        // Their devices open a direct WebRTC session, and the UI says so.
        wait_attr(&alice, "contact", "data-direct", "true").await?;

        // Alice writes; Bob reads; Alice sees it delivered, then read. From here on,
        // what Alice's window shows changes by events: no list or conversation is
        // fetched again for a message or a receipt.
        bob_in_alices_list.click().await?;
        wait_text(&alice, "conversation-title", |t| t == "Bob").await?;
        count_commands(&alice).await?;
        paste(&alice, "message-input", "hello over the network").await?;
        click(&alice, "send").await?;
        wait_text(&bob, "message-body", |t| t == "hello over the network").await?;
        wait_text(&alice, "message-state", |s| s == "delivered" || s == "read").await?;
        assert_eq!(text_of(&alice, "route").await?, "direct");
        screenshot(&bob, "network-conversation").await?;

        // And back.
        paste(&bob, "message-input", "hello Alice").await?;
        click(&bob, "send").await?;
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let texts = bodies(&alice).await.unwrap_or_default();
            if texts == ["hello over the network", "hello Alice"] {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Alice got Bob's reply: {texts:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let calls = commands_called(&alice).await?;
        assert_eq!(calls.get("send_text"), Some(&1), "{calls:?}");
        for fetch_all in ["conversation", "contacts", "groups", "account"] {
            assert_eq!(calls.get(fetch_all), None, "{fetch_all} was called again: {calls:?}");
        }
        assert!(
            calls.contains_key("mark_read"),
            "Bob's reply was read where it arrived: {calls:?}"
        );
        // Alice also pastes Bob's invite: both have pasted, and both show the same
        // safety number.
        click(&bob, "my-invite").await?;
        let bob_link = full_text(&bob, "invite-link").await?;
        let at_alice = add_contact_and_read_safety_number(&alice, &bob_link, "Bob").await?;
        element(&bob, "contact").await?.click().await?;
        click(&bob, "open-safety-number").await?;
        let at_bob: String = full_text(&bob, "safety-digits")
            .await?
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        assert_eq!(at_alice.len(), 60);
        assert_eq!(at_alice, at_bob, "the same safety number on both sides");
        click(&alice, "contact").await?;

        // Bob quits: Alice sees him go offline.
        bob.close().await?;
        wait_attr(&alice, "contact", "data-online", "false").await?;
        assert_eq!(text_of(&alice, "presence").await?, "offline");
        alice.close().await?;
        Ok(())
    })
    .await
}

/// Counts, from now on, the commands the page calls, by name: every call goes to the
/// app as a request to `ipc://localhost/COMMAND`, which the page makes with `fetch`.
async fn count_commands(client: &Client) -> Result<()> {
    client
        .execute(
            r#"
            window.__cairnCalls = {};
            const fetch = window.fetch.bind(window);
            window.fetch = (resource, options) => {
                const url = String(resource instanceof Request ? resource.url : resource);
                if (url.startsWith("ipc:")) {
                    const command = decodeURIComponent(url.split("/").pop());
                    window.__cairnCalls[command] = (window.__cairnCalls[command] || 0) + 1;
                }
                return fetch(resource, options);
            };
            "#,
            vec![],
        )
        .await?;
    Ok(())
}

/// The commands called since [`count_commands`], by name.
async fn commands_called(client: &Client) -> Result<std::collections::BTreeMap<String, u64>> {
    let calls = client.execute("return window.__cairnCalls", vec![]).await?;
    Ok(serde_json::from_value(calls)?)
}

/// Waits until `test_id`'s attribute `name` reads `value`.
async fn wait_attr(client: &Client, test_id: &str, name: &str, value: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let current = element(client, test_id).await?.attr(name).await?;
        if current.as_deref() == Some(value) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("[data-testid='{test_id}'] {name} is still {current:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `cairnd node` process (the always-on peer cache), stopped with SIGTERM on drop.
struct CacheNode {
    child: Child,
    /// Its address, `/ip4/127.0.0.1/tcp/PORT/p2p/PEER`.
    address: String,
}

impl CacheNode {
    /// Creates a profile in `dir` and runs `cairnd node` on a loopback port.
    fn start(dir: &Path) -> Result<Self> {
        // Built beside this test by `cargo test --workspace` / nextest.
        let cairnd = std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|debug| debug.join("cairnd"))
            .filter(|path| path.exists())
            .context("no cairnd binary beside the tests: run the suite through ./test.sh")?;
        let port = free_port()?;
        let command = |args: &[&str]| {
            let mut command = Command::new(&cairnd);
            command
                .arg("--profile-dir")
                .arg(dir)
                .args(["--no-mdns", "--no-webrtc"])
                .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")])
                .args(args)
                .env("CAIRND_PASSPHRASE", "an always-on node's passphrase");
            command
        };
        let init = command(&["init", "--name", "Home node"]).output()?;
        anyhow::ensure!(
            init.status.success(),
            "cairnd init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let mut child = command(&["node"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("cairnd's output")?;
        // Keep reading what it prints (a closed pipe would stop it); the first line names it.
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                note(&format!("cairnd: {line}"));
                let _ = first_tx.send(line);
            }
        });
        let first = first_rx.recv_timeout(STEP).context("cairnd printed nothing")?;
        let peer = first
            .trim()
            .strip_prefix("peer ")
            .context("cairnd printed no peer id")?;
        Ok(Self {
            address: format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"),
            child,
        })
    }
}

impl Drop for CacheNode {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_to_a_closed_app_waits_in_the_peer_cache_after_the_sender_closes_too() -> Result<()> {
    with_timeout(async {
        let data = tempfile::tempdir()?;
        let node_dir = tempfile::tempdir()?;
        let node = CacheNode::start(node_dir.path())?;
        let on_network = [("CAIRN_BOOTSTRAP", node.address.as_str())];
        let (alice_driver, bob_driver) = (
            Driver::start(data.path(), &on_network)?,
            Driver::start(data.path(), &on_network)?,
        );
        let alice = alice_driver.launch("alice").await?;
        let bob = bob_driver.launch("bob").await?;
        onboard(&alice, "Alice").await?;
        onboard(&bob, "Bob").await?;
        wait_text(&alice, "invite-addresses", |n| n != "0").await?;
        let alice_link = full_text(&alice, "invite-link").await?;
        click(&bob, "add-contact").await?;
        paste(&bob, "invite-input", &alice_link).await?;
        click(&bob, "accept-invite").await?;
        wait_attr(&alice, "contact", "data-online", "true").await?;

        // Bob closes Cairn. Alice writes; the always-on node holds it for him.
        bob.close().await?;
        wait_attr(&alice, "contact", "data-online", "false").await?;
        click(&alice, "contact").await?;
        paste(&alice, "message-input", "held for you while you were away").await?;
        click(&alice, "send").await?;
        wait_text(&alice, "message-state", |s| s == "sent (held by 1 peer)").await?;
        screenshot(&alice, "held-by-peers").await?;
        // Alice closes Cairn too; only the node is up.
        alice.close().await?;

        // Bob opens Cairn again and finds the message.
        let bob = bob_driver.launch("bob").await?;
        element(&bob, "contact").await?.click().await?;
        wait_text(&bob, "message-body", |t| t == "held for you while you were away").await?;
        screenshot(&bob, "received-from-cache").await?;
        bob.close().await?;
        drop(node);
        Ok(())
    })
    .await
}

/// The texts of every `message-body` shown, in order. An error when the list changed
/// while it was read (an element found is gone by the time its text is asked for).
async fn bodies(client: &Client) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    for body in client.find_all(Locator::Css("[data-testid='message-body']")).await? {
        texts.push(body.text().await?);
    }
    Ok(texts)
}

/// Waits until the conversation shown holds exactly `expected`.
async fn wait_bodies(client: &Client, who: &str, expected: &[&str]) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        // A list read while it changed is read again.
        let texts = bodies(client).await.unwrap_or_default();
        if texts == expected {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{who} shows {texts:?}, not {expected:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens the group called `name` from the list, once it is there.
async fn open_group(client: &Client, name: &str) -> Result<()> {
    client
        .wait()
        .at_most(STEP)
        .for_element(Locator::Css(&format!("[data-testid='group'][data-name='{name}']")))
        .await
        .with_context(|| format!("waiting for the group {name}"))?
        .click()
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_app_instances_one_creates_a_group_and_all_three_chat_in_it() -> Result<()> {
    with_timeout(async {
        let data = tempfile::tempdir()?;
        let ((_alice_driver, alice), (_bob_driver, bob)) = onboarded_pair(data.path()).await?;
        let carol_driver = Driver::start(data.path(), &[])?;
        let carol = carol_driver.launch("carol").await?;
        onboard(&carol, "Carol").await?;

        // Bob and Carol each add Alice; they do not know each other.
        wait_text(&alice, "invite-addresses", |n| n != "0").await?;
        let alice_link = full_text(&alice, "invite-link").await?;
        for friend in [&bob, &carol] {
            click(friend, "add-contact").await?;
            paste(friend, "invite-input", &alice_link).await?;
            click(friend, "accept-invite").await?;
            assert_eq!(text_of(friend, "conversation-title").await?, "Alice");
        }
        let deadline = tokio::time::Instant::now() + STEP;
        while alice.find_all(Locator::Css("[data-testid='contact']")).await?.len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "Alice sees both contacts");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Alice starts a group with both.
        click(&alice, "new-group").await?;
        paste(&alice, "group-name", "Saturday climb").await?;
        for pick in alice.find_all(Locator::Css("[data-testid='group-pick']")).await? {
            pick.click().await?;
        }
        click(&alice, "create-group").await?;
        assert_eq!(text_of(&alice, "group-title").await?, "Saturday climb");

        // Bob and Carol see it, with its three members and Alice marked admin.
        for (who, client) in [("Bob", &bob), ("Carol", &carol)] {
            open_group(client, "Saturday climb").await?;
            assert_eq!(text_of(client, "group-title").await?, "Saturday climb");
            let deadline = tokio::time::Instant::now() + STEP;
            loop {
                let members = client.find_all(Locator::Css("[data-testid='group-member']")).await?;
                let mut admins = Vec::new();
                for member in &members {
                    if member.attr("data-admin").await?.as_deref() == Some("true") {
                        admins.push(member.attr("data-name").await?.unwrap_or_default());
                    }
                }
                if members.len() == 3 && admins == ["Alice"] {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{who} sees three members, Alice admin"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        screenshot(&carol, "group-members").await?;

        // They talk: each line reaches the other two.
        paste(&bob, "group-message-input", "Bob: I'll bring the rope").await?;
        click(&bob, "group-send").await?;
        wait_bodies(&carol, "Carol", &["Bob: I'll bring the rope"]).await?;
        paste(&carol, "group-message-input", "Carol: I'll drive").await?;
        click(&carol, "group-send").await?;
        wait_bodies(&bob, "Bob", &["Bob: I'll bring the rope", "Carol: I'll drive"]).await?;
        paste(&alice, "group-message-input", "Alice: see you at 8").await?;
        click(&alice, "group-send").await?;
        let all = ["Bob: I'll bring the rope", "Carol: I'll drive", "Alice: see you at 8"];
        for (who, client) in [("Alice", &alice), ("Bob", &bob), ("Carol", &carol)] {
            wait_bodies(client, who, &all).await?;
        }
        // Incoming lines name their sender.
        assert_eq!(text_of(&carol, "message-sender").await?, "Bob");
        screenshot(&bob, "group-chat").await?;

        for client in [alice, bob, carol] {
            client.close().await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_app_instance_links_to_alices_account_by_paste_and_both_show_the_same_conversation() -> Result<()> {
    with_timeout(async {
        let data = tempfile::tempdir()?;
        let ((_alice_driver, alice), (_bob_driver, bob)) = onboarded_pair(data.path()).await?;
        wait_text(&alice, "invite-addresses", |n| n != "0").await?;
        let alice_link = full_text(&alice, "invite-link").await?;
        click(&bob, "add-contact").await?;
        paste(&bob, "invite-input", &alice_link).await?;
        click(&bob, "accept-invite").await?;
        element(&alice, "contact").await?;
        // A message from before the link, which the history brings to the new device.
        paste(&bob, "message-input", "before you had a desktop").await?;
        click(&bob, "send").await?;
        click(&alice, "contact").await?;
        wait_bodies(&alice, "laptop", &["before you had a desktop"]).await?;

        // Alice's laptop shows a link offer; her new desktop pastes it.
        click(&alice, "open-settings").await?;
        // Once the device list is in, the page no longer moves under the pointer.
        element(&alice, "device").await?;
        element(&alice, "offer-link").await?.click().await?;
        let offer = full_text(&alice, "link-offer").await?;
        // The QR code the app shows reads back (from a PNG screenshot) as the same offer.
        let window_png = alice.screenshot().await?;
        let scanned = cairn_core::read_qr_image(&window_png)?;
        assert_eq!(
            cairn_core::LinkOffer::from_link(&scanned)?,
            cairn_core::LinkOffer::from_link(&offer)?
        );
        // The desktop has a camera: WebKit's test camera, which shows no code.
        let desktop_driver = Driver::start(data.path(), &[("CAIRN_MOCK_CAMERA", "1")])?;
        let desktop = desktop_driver.launch("alice-desktop").await?;
        element(&desktop, "link-existing").await?.click().await?;
        // Scanning with it reads frame after frame, finding nothing in them.
        element(&desktop, "scan-with-camera").await?.click().await?;
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let read = element(&desktop, "camera-scan").await?.attr("data-frames-read").await?;
            if read.and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n >= 3) {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline && !is_shown(&desktop, "camera-error").await?,
                "the camera gave no frames"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(!is_shown(&desktop, "camera-error").await?);
        // A picture of the code fills in the same link as pasting it does.
        let picture = data.path().join("link-offer.png");
        std::fs::write(&picture, &window_png)?;
        element(&desktop, "link-qr-file")
            .await?
            .send_keys(&picture.display().to_string())
            .await?;
        let deadline = tokio::time::Instant::now() + STEP;
        while element(&desktop, "link-input").await?.prop("value").await?.as_deref() != Some(offer.as_str()) {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the picture did not fill in the link"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        paste(&desktop, "link-input", &offer).await?;
        element(&desktop, "join-by-link").await?.click().await?;

        // Both screens show one code; Alice confirms it on the laptop, with history.
        let on_desktop = text_of(&desktop, "new-device-code").await?;
        let on_laptop = text_of(&alice, "link-code").await?;
        assert_eq!(on_desktop, on_laptop, "both screens show the same code");
        assert_eq!(on_desktop.chars().filter(char::is_ascii_digit).count(), 6);
        assert!(element(&alice, "share-history").await?.is_selected().await?);
        element(&alice, "confirm-link").await?.click().await?;
        element(&alice, "link-done").await?;

        // The desktop is Alice now, with Bob among her contacts and their history.
        assert_eq!(text_of(&desktop, "display-name-shown").await?, "Alice");
        let bob_on_desktop = element(&desktop, "contact").await?;
        assert_eq!(bob_on_desktop.attr("data-name").await?.as_deref(), Some("Bob"));
        bob_on_desktop.click().await?;
        wait_bodies(&desktop, "desktop", &["before you had a desktop"]).await?;

        // Bob writes once Alice's new device is on his list; both of hers show it.
        element(&bob, "contact").await?.click().await?;
        wait_text(&bob, "contact-devices", |n| n == "2").await?;
        paste(&bob, "message-input", "hello to both your computers").await?;
        click(&bob, "send").await?;
        click(&alice, "contact").await?;
        let both = ["before you had a desktop", "hello to both your computers"];
        for (who, client) in [("laptop", &alice), ("desktop", &desktop)] {
            wait_bodies(client, who, &both).await?;
        }
        // The desktop answers; the laptop shows the answer too.
        paste(&desktop, "message-input", "got it on the desktop").await?;
        click(&desktop, "send").await?;
        let all = [both[0], both[1], "got it on the desktop"];
        for (who, client) in [("laptop", &alice), ("desktop", &desktop), ("Bob", &bob)] {
            wait_bodies(client, who, &all).await?;
        }
        screenshot(&desktop, "linked-desktop").await?;

        // Settings on the laptop list both devices; Alice names the desktop, then
        // removes it. The desktop says it was removed, and Bob's list of Alice's
        // devices is down to one.
        click(&alice, "open-settings").await?;
        let deadline = tokio::time::Instant::now() + STEP;
        while alice.find_all(Locator::Css("[data-testid='device']")).await?.len() != 2 {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the laptop does not list two devices"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Within the row of the other device (the desktop).
        let within =
            |test_id: &str| format!("[data-testid='device'][data-this-device='false'] [data-testid='{test_id}']");
        alice
            .find(Locator::Css(&within("rename-device")))
            .await?
            .click()
            .await?;
        let input = element(&alice, "device-name-input").await?;
        input.clear().await?;
        input.send_keys("Study desktop").await?;
        click(&alice, "save-device-name").await?;
        let selector = within("device-name");
        let name = alice.wait().at_most(STEP).for_element(Locator::Css(&selector)).await?;
        assert_eq!(name.text().await?, "Study desktop");
        alice
            .find(Locator::Css(&within("remove-device")))
            .await?
            .click()
            .await?;
        click(&alice, "confirm-remove-device").await?;
        element(&desktop, "device-removed").await?;
        wait_text(&bob, "contact-devices", |n| n == "1").await?;
        assert_eq!(alice.find_all(Locator::Css("[data-testid='device']")).await?.len(), 1);
        screenshot(&desktop, "removed-desktop").await?;
        for client in [alice, bob, desktop] {
            client.close().await?;
        }
        Ok(())
    })
    .await
}
