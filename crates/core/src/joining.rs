//! The new device's side of linking over the network: a node of its own for the
//! duration, the handshake with the device that made the offer, waiting for the person
//! to confirm the code there, the hand-over, this device's card back, and the history
//! page by page (see [`crate::linking`] for the protocol without the network).

use std::time::Duration;

use cairn_net::{peer_id_of, NodeConfig};

use crate::courier::{with, SharedMessenger};
use crate::{CoreError, Result};

/// What a new device shows while it links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStep {
    /// The code to compare with the one the other device shows.
    Code(String),
    /// The other device took this one's card: it is linked. History may follow.
    Linked,
    /// Linked; history is coming in: `received` of `total` messages so far.
    History {
        /// Messages taken so far.
        received: u64,
        /// Messages the other device holds.
        total: u64,
    },
    /// Linked, but the history could not be passed on (and why).
    HistoryFailed(String),
}

/// Links the open profile (which has no account yet) to the account of the device
/// that made `offer`, over a node of its own that stops afterwards: the handshake,
/// the code to show, then waiting (until the offer expires) for the person to confirm
/// on the other device, the hand-over, this device's card back, and the message
/// history page by page if the person passed it on. `on_step` hears of each step.
/// Once linked, a failure to pass the history on does not undo the link: it is
/// reported as [`LinkStep::HistoryFailed`].
pub async fn join_by_link(
    messenger: &SharedMessenger,
    offer: &cairn_proto::LinkOffer,
    config: NodeConfig,
    mut on_step: impl FnMut(LinkStep),
) -> Result<()> {
    use cairn_proto::{LinkRequest, LinkResponse};
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
    let (node, _events) = cairn_net::start(seed, config)?;
    let peer = peer_id_of(&offer.transport_key)?;
    for address in &offer.addresses {
        if let Ok(address) = address.parse() {
            node.add_address(peer, address).await?;
        }
    }
    let ask = |request: LinkRequest| {
        let node = node.clone();
        async move {
            let answer = node.link_request(peer, request.to_bytes()).await?;
            match LinkResponse::from_bytes(&answer)? {
                LinkResponse::Refused(why) => Err(CoreError::LinkRefused(why)),
                response => Ok(response),
            }
        }
    };
    let now = || with(messenger, |m| m.now_secs()).unwrap_or(0);
    let (mut link, first) = crate::NewDeviceLink::start(offer, now())?;
    let LinkResponse::Answer(answer) = ask(LinkRequest::Hello(first)).await? else {
        return Err(CoreError::LinkRefused(
            "the other device did not answer the handshake".into(),
        ));
    };
    on_step(LinkStep::Code(link.answered(&answer)?));
    let frames = loop {
        match ask(LinkRequest::Ready).await? {
            LinkResponse::HandOver(frames) => break frames,
            LinkResponse::Wait if now() < offer.expires_at => tokio::time::sleep(Duration::from_millis(300)).await,
            _ => return Err(CoreError::LinkRefused("the code was not confirmed in time".into())),
        }
    };
    let card = with(messenger, |m| {
        let card = m.join_over_link(&mut link, &frames)?;
        // Where the other device listens, for this device's node from now on.
        for address in offer.addresses.iter().take(8) {
            m.db().peers().save(&offer.transport_key, address, m.now_millis())?;
        }
        Ok::<_, CoreError>(card)
    })
    .ok_or(CoreError::NoAccount)??;
    match ask(LinkRequest::Card(card)).await? {
        LinkResponse::Done => on_step(LinkStep::Linked),
        _ => {
            return Err(CoreError::LinkRefused(
                "the other device did not take this one's card".into(),
            ))
        }
    }
    let (mut from, mut received) = (Some(0), 0);
    while let Some(start) = from {
        let page = match ask(LinkRequest::History { from: start }).await {
            Ok(LinkResponse::History(frames)) => {
                with(messenger, |m| m.import_history(&mut link, &frames)).unwrap_or(Err(CoreError::NoAccount))
            }
            Ok(LinkResponse::NoHistory) => return Ok(()),
            Ok(_) => Err(CoreError::LinkRefused("an answer that is not history".into())),
            Err(e) => Err(e),
        };
        match page {
            Ok(page) => {
                received += page.received;
                on_step(LinkStep::History {
                    received,
                    total: page.total.max(received),
                });
                from = page.next;
            }
            Err(e) => {
                tracing::warn!(%e, "the history could not be passed on");
                on_step(LinkStep::HistoryFailed(e.to_string()));
                return Ok(());
            }
        }
    }
    Ok(())
}
