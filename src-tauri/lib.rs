//! The Cairn desktop shell: command-line options, the window, and the Tauri commands
//! the web UI calls. Commands map onto [`cairn_core::Messenger`]; no protocol logic
//! lives here.

mod commands;
mod events;
mod network;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tauri::webview::{PermissionKind, PermissionResponse};
use tauri::{Manager, RunEvent, WebviewUrl, WebviewWindowBuilder};

pub use commands::AppState;

/// Command-line options of the desktop app.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about = "Cairn: serverless end-to-end encrypted chat")]
struct Options {
    /// Profile to open; each profile is a separate account with its own data.
    #[arg(long, env = "CAIRN_PROFILE", default_value = cairn_core::DEFAULT_PROFILE)]
    profile: String,
    /// Directory to keep the profile in, instead of the platform data directory.
    #[arg(long, env = "CAIRN_PROFILE_DIR")]
    profile_dir: Option<PathBuf>,
}

/// The typed command list, shared by the app and the TypeScript bindings generator.
pub fn specta_builder() -> tauri_specta::Builder<tauri::Wry> {
    tauri_specta::Builder::<tauri::Wry>::new()
        .commands(tauri_specta::collect_commands![
            commands::profile_status,
            commands::create_account,
            commands::unlock,
            commands::account,
            commands::contacts,
            commands::accept_invite,
            commands::read_qr_image,
            commands::read_qr_frame,
            commands::conversation,
            commands::mark_read,
            commands::send_text,
            commands::retry_message,
            commands::safety_number,
            commands::set_verified,
            commands::accept_identity_change,
            commands::reject_identity_change,
            commands::search,
            commands::settings,
            commands::set_read_receipts,
            commands::set_ice_servers,
            commands::set_cache_quota,
            commands::set_message_ttl,
            commands::set_always_on_nodes,
            commands::groups,
            commands::create_group,
            commands::add_group_members,
            commands::remove_group_members,
            commands::rename_group,
            commands::set_group_admin,
            commands::leave_group,
            commands::send_group_text,
            commands::offer_link,
            commands::served_link,
            commands::confirm_link,
            commands::join_by_link,
            commands::devices,
            commands::rename_device,
            commands::remove_device,
        ])
        .events(events::collect())
}

/// The TypeScript exporter settings the checked-in bindings were made with.
pub fn typescript() -> specta_typescript::Typescript {
    specta_typescript::Typescript::default()
        .header("// Generated from the Rust commands in src-tauri by tauri-specta. Do not edit:\n// run `UPDATE_BINDINGS=1 cargo test --lib bindings` to regenerate.\n")
}

/// Runs the desktop app until its window closes.
pub fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let options = Options::parse();
    let profile_dir = match options.profile_dir {
        Some(dir) => dir,
        None => cairn_core::default_profile_dir(&options.profile)?,
    };
    std::fs::create_dir_all(&profile_dir)
        .with_context(|| format!("creating the profile directory {}", profile_dir.display()))?;
    tracing::info!(profile = %options.profile, dir = %profile_dir.display(), "starting Cairn");

    let specta = specta_builder();
    let title = format!("Cairn — {}", options.profile);
    let webview_dir = profile_dir.join("webview");
    tauri::Builder::default()
        .manage(AppState::new(profile_dir))
        .invoke_handler(specta.invoke_handler())
        .setup(move |app| {
            specta.mount_events(app);
            let _ = app.state::<AppState>().app.set(app.handle().clone());
            // Each profile gets its own webview data, so two instances never share it.
            let window = WebviewWindowBuilder::new(app, "main", WebviewUrl::App("index.html".into()))
                .title(&title)
                .inner_size(1120.0, 900.0)
                .min_inner_size(480.0, 520.0)
                .data_directory(webview_dir.clone())
                // The camera, to scan a link code from another device's screen;
                // nothing else. (A request for camera and microphone together is
                // refused whole: granting it would grant both.)
                .on_permission_request(|_, kind| match kind {
                    PermissionKind::Camera => PermissionResponse::Allow,
                    _ => PermissionResponse::Deny,
                })
                .build()?;
            #[cfg(target_os = "linux")]
            enable_camera(&window);
            Ok(())
        })
        .build(tauri::generate_context!())
        .context("building the Tauri application")?
        .run(|app, event| {
            if let RunEvent::Exit = event {
                network::hand_over_before_exit(app);
            }
        });
    Ok(())
}

/// WebKitGTK keeps `getUserMedia` off unless the embedder turns media streams on.
/// `CAIRN_MOCK_CAMERA=1` gives the page WebKit's test camera instead of a real one
/// (for the end-to-end tests, on machines without a camera).
#[cfg(target_os = "linux")]
fn enable_camera(window: &tauri::WebviewWindow) {
    let mock = std::env::var_os("CAIRN_MOCK_CAMERA").is_some_and(|v| v == "1");
    let outcome = window.with_webview(move |webview| {
        use webkit2gtk::{SettingsExt, WebViewExt};
        if let Some(settings) = WebViewExt::settings(&webview.inner()) {
            settings.set_enable_media_stream(true);
            settings.set_enable_mock_capture_devices(mock);
        }
    });
    if let Err(e) = outcome {
        tracing::warn!(%e, "the camera cannot be offered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BINDINGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ui/src/lib/bindings.ts");

    #[test]
    fn bindings_checked_in_match_the_rust_commands() {
        let fresh = specta_builder().export_str(typescript()).expect("export bindings");
        if std::env::var_os("UPDATE_BINDINGS").is_some() {
            std::fs::write(BINDINGS, &fresh).unwrap();
        }
        let checked_in = std::fs::read_to_string(BINDINGS).unwrap_or_default();
        assert!(
            checked_in == fresh,
            "ui/src/lib/bindings.ts is out of date: run `UPDATE_BINDINGS=1 cargo test --lib bindings`"
        );
    }

    #[test]
    fn the_profile_option_and_variable_are_understood() {
        let options = Options::try_parse_from(["cairn", "--profile", "bob"]).unwrap();
        assert_eq!(options.profile, "bob");
        assert!(Options::try_parse_from(["cairn", "--bogus"]).is_err());
    }
}
