//! Typed events to the UI. What the core reports ([`cairn_core::Event`]: a message, a
//! state change, a contact, a group, the devices) and what the courier adds (presence,
//! this device's addresses, a link under way) become the same items the commands
//! return, so the UI applies each change where it is instead of fetching everything
//! again. The TypeScript for them is generated with the commands'.

use cairn_core::{Courier, Event, Messenger};
use serde::Serialize;
use specta::Type;
use tauri::{AppHandle, Manager};
use tauri_specta::Event as _;

use crate::commands::{
    contact_item, device_items, served_link_view, AccountView, ContactItem, DeviceItem, GroupItem, MessageItem,
    ServedLinkView,
};
use crate::AppState;

/// A message is new here: it arrived, an own device sent it, or this one did.
#[derive(Debug, Clone, Serialize, Type, tauri_specta::Event)]
pub struct MessageAdded {
    pub message: MessageItem,
}

/// A message's delivery state moved on (sent, delivered, read, failed, sending again).
#[derive(Debug, Clone, Serialize, Type, tauri_specta::Event)]
pub struct MessageUpdated {
    pub message: MessageItem,
}

/// A contact is new or changed: name, devices, verification, a changed key, presence.
#[derive(Debug, Clone, Serialize, Type, tauri_specta::Event)]
pub struct ContactUpdated {
    pub contact: ContactItem,
}

/// A group is new or changed: members, admins, name, epoch, or this device left it.
#[derive(Debug, Clone, Serialize, Type, tauri_specta::Event)]
pub struct GroupUpdated {
    pub group: GroupItem,
}

/// The account as shown changed: the invite's addresses, or this device was removed.
#[derive(Debug, Clone, Serialize, Type, tauri_specta::Event)]
pub struct AccountUpdated {
    pub account: AccountView,
}

/// The account's devices changed (one linked, renamed or removed).
#[derive(Debug, Clone, Serialize, Type, tauri_specta::Event)]
pub struct DevicesUpdated {
    pub devices: Vec<DeviceItem>,
}

/// A link this device serves moved on (`None` once it is done).
#[derive(Debug, Clone, Serialize, Type, tauri_specta::Event)]
pub struct LinkUpdated {
    pub link: Option<ServedLinkView>,
}

/// While this device links to an account: the code to compare with the other screen.
#[derive(Debug, Clone, Serialize, Type, tauri_specta::Event)]
pub struct JoinCode {
    pub code: String,
}

/// While this device links to an account: how far the history has come.
#[derive(Debug, Clone, Serialize, Type, tauri_specta::Event)]
#[serde(rename_all = "camelCase")]
pub struct JoinHistory {
    pub received: f64,
    pub total: f64,
    /// Set when the history could not be passed on (the link itself stands).
    pub failed: Option<String>,
}

/// One event for the UI.
pub enum UiEvent {
    MessageAdded(MessageAdded),
    MessageUpdated(MessageUpdated),
    ContactUpdated(ContactUpdated),
    GroupUpdated(GroupUpdated),
    AccountUpdated(AccountUpdated),
    DevicesUpdated(DevicesUpdated),
    LinkUpdated(LinkUpdated),
}

impl UiEvent {
    /// Sends it to the UI (a window that is gone hears nothing, which is fine).
    pub fn emit(&self, app: &AppHandle) {
        let sent = match self {
            UiEvent::MessageAdded(e) => e.emit(app),
            UiEvent::MessageUpdated(e) => e.emit(app),
            UiEvent::ContactUpdated(e) => e.emit(app),
            UiEvent::GroupUpdated(e) => e.emit(app),
            UiEvent::AccountUpdated(e) => e.emit(app),
            UiEvent::DevicesUpdated(e) => e.emit(app),
            UiEvent::LinkUpdated(e) => e.emit(app),
        };
        if let Err(e) = sent {
            tracing::debug!(%e, "an event did not reach the UI");
        }
    }
}

/// What `event` means for the UI, read from the messenger (and the courier, for
/// presence). Something that is gone by now (a contact, a group) gives nothing.
pub fn for_ui(m: &Messenger, courier: Option<&Courier>, event: Event) -> Vec<UiEvent> {
    let account = || {
        AccountView::of(m)
            .ok()
            .map(|account| UiEvent::AccountUpdated(AccountUpdated { account }))
    };
    match event {
        Event::Message(message) => vec![UiEvent::MessageAdded(MessageAdded {
            message: message.into(),
        })],
        Event::StateChanged { id, .. } => m
            .message(&id)
            .map(|message| {
                UiEvent::MessageUpdated(MessageUpdated {
                    message: message.into(),
                })
            })
            .into_iter()
            .collect(),
        Event::ContactChanged(account_id) | Event::IdentityChanged(account_id) | Event::PresenceChanged(account_id) => {
            contact_item(m, courier, &account_id)
                .map(|contact| UiEvent::ContactUpdated(ContactUpdated { contact }))
                .into_iter()
                .collect()
        }
        Event::GroupChanged(group_id) => m
            .group(&group_id)
            .map(|group| UiEvent::GroupUpdated(GroupUpdated { group: group.into() }))
            .into_iter()
            .collect(),
        Event::DevicesChanged => device_items(m)
            .map(|devices| UiEvent::DevicesUpdated(DevicesUpdated { devices }))
            .into_iter()
            .chain(account())
            .collect(),
        Event::AccountChanged => account().into_iter().collect(),
        Event::LinkChanged => vec![UiEvent::LinkUpdated(LinkUpdated {
            link: served_link_view(m),
        })],
        Event::DirectSignal { .. } => Vec::new(),
    }
}

/// Passes on what the courier reports.
pub fn forward(app: &AppHandle, event: Event) {
    let state = app.state::<AppState>();
    let events = {
        let slot = state.messenger.lock().expect("messenger lock");
        match slot.as_ref() {
            Some(m) => for_ui(m, state.network.get(), event),
            None => Vec::new(),
        }
    };
    for event in events {
        event.emit(app);
    }
}

/// The events the UI listens for, for the bindings.
pub fn collect() -> tauri_specta::Events {
    tauri_specta::collect_events![
        MessageAdded,
        MessageUpdated,
        ContactUpdated,
        GroupUpdated,
        AccountUpdated,
        DevicesUpdated,
        LinkUpdated,
        JoinCode,
        JoinHistory
    ]
}
