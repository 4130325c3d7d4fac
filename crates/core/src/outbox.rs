//! The outbox: sealed envelopes kept in the encrypted store until a transport takes
//! them, so nothing produced while offline (or before the network layer runs) is lost.
//! Every operation that produces envelopes queues them in the same transaction as the
//! state change that produced them, and also returns them for a caller that can
//! deliver at once (it then dequeues them).

use cairn_proto::Envelope;

use crate::messenger::{unix_millis, Messenger};
use crate::{Outgoing, Result};

/// An envelope waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEnvelope {
    /// Its place in the queue, to remove it once delivered.
    pub seq: i64,
    /// The envelope and where it goes.
    pub outgoing: Outgoing,
}

impl Messenger {
    /// Puts envelopes in the outbox.
    pub fn enqueue(&self, out: &[Outgoing]) -> Result<()> {
        for o in out {
            self.db.enqueue_envelope(
                &o.account_id,
                o.device_id,
                &o.envelope.to_bytes(),
                o.message.as_ref().map(|id| &id[..]),
                unix_millis(),
            )?;
        }
        Ok(())
    }

    /// The oldest `limit` envelopes waiting for a transport and due now.
    pub fn queued(&self, limit: usize) -> Result<Vec<QueuedEnvelope>> {
        let mut queued = Vec::new();
        for row in self.db.queued_envelopes(limit, unix_millis())? {
            match Envelope::from_bytes(&row.envelope) {
                Ok(envelope) => queued.push(QueuedEnvelope {
                    seq: row.seq,
                    outgoing: Outgoing {
                        account_id: row.account_id,
                        device_id: row.device_id,
                        envelope,
                        message: row.message_id.and_then(|id| id.try_into().ok()),
                    },
                }),
                // A row we cannot read would block the queue forever: drop it, loudly.
                Err(e) => {
                    tracing::error!(seq = row.seq, %e, "dropping an unreadable outbox entry");
                    self.db.dequeue_envelope(row.seq)?;
                }
            }
        }
        Ok(queued)
    }

    /// A delivery attempt for `seq` failed: try again later, backing off.
    pub fn defer(&self, seq: i64) -> Result<()> {
        Ok(self.db.defer_envelope(seq, unix_millis())?)
    }

    /// Makes every queued envelope due now.
    pub fn retry_now(&self) -> Result<()> {
        Ok(self.db.retry_envelopes_now(None)?)
    }

    /// Makes the envelopes queued for one device due now (it came online).
    pub fn retry_now_for(&self, account_id: &str, device_id: u8) -> Result<()> {
        Ok(self.db.retry_envelopes_now(Some((account_id, device_id)))?)
    }

    /// A transport delivered the queued envelope `seq`.
    pub fn dequeue(&self, seq: i64) -> Result<()> {
        Ok(self.db.dequeue_envelope(seq)?)
    }
}
