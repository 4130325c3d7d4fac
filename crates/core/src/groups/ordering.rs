//! Where a group message goes in the group's history of epochs, decided without MLS:
//! the epoch it was made in, whether it is a commit, the epoch the device is in, and
//! the hash of the last commit it applied (known while a concurrent commit may still
//! win). Fork choice: of two commits made in one epoch, the one with the lower SHA-256
//! wins on every device.

use std::cmp::Ordering;

use sha2::{Digest, Sha256};

/// What to do with a group message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// It belongs to the current epoch: apply it. If it does not open while a
    /// concurrent commit may still win, it may belong to the other branch: it waits.
    Apply { may_wait: bool },
    /// It was made in a later epoch: keep it until the commits before it arrive.
    Wait,
    /// A commit for the previous epoch that wins over the one applied: go back and
    /// apply it instead.
    SwitchTo,
    /// An application message of an earlier epoch, overtaken by a commit: its epoch's
    /// keys are kept a while, so it still opens.
    ApplyLate,
    /// A commit for an earlier epoch that lost (or is too old to matter): drop it.
    Drop,
}

/// The header of a message as far as ordering goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Position<'a> {
    /// The epoch it was made in.
    pub epoch: u64,
    /// Whether it is a commit (it moves the group to the next epoch).
    pub commit: bool,
    /// The whole message, whose hash settles a tie between commits.
    pub bytes: &'a [u8],
}

/// Where the device stands in the group.
#[derive(Debug, Clone, Copy)]
pub(super) struct Standing<'a> {
    /// Its current epoch.
    pub epoch: u64,
    /// The hash of the last commit applied, while a concurrent one may still win.
    pub last_commit: Option<&'a [u8]>,
}

/// Places `message` in the group's epochs as the device stands.
pub(super) fn place(message: Position<'_>, device: Standing<'_>) -> Placement {
    match message.epoch.cmp(&device.epoch) {
        Ordering::Greater => Placement::Wait,
        Ordering::Equal => Placement::Apply {
            may_wait: device.last_commit.is_some(),
        },
        Ordering::Less if !message.commit => Placement::ApplyLate,
        Ordering::Less => {
            let wins = message.epoch + 1 == device.epoch
                && device
                    .last_commit
                    .is_some_and(|applied| Sha256::digest(message.bytes).as_slice() < applied);
            if wins {
                Placement::SwitchTo
            } else {
                Placement::Drop
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(epoch: u64, bytes: &[u8]) -> Position<'_> {
        Position {
            epoch,
            commit: true,
            bytes,
        }
    }

    /// Two commits made in one epoch, and their hashes in order: (lower, higher).
    fn rivals() -> (Vec<u8>, Vec<u8>) {
        let (a, b) = (b"commit from Alice".to_vec(), b"commit from Bob".to_vec());
        if Sha256::digest(&a) < Sha256::digest(&b) {
            (a, b)
        } else {
            (b, a)
        }
    }

    #[test]
    fn a_message_of_the_current_epoch_applies_and_may_wait_only_while_a_fork_is_open() {
        let text = Position {
            epoch: 4,
            commit: false,
            bytes: b"hello",
        };
        let settled = Standing {
            epoch: 4,
            last_commit: None,
        };
        assert_eq!(place(text, settled), Placement::Apply { may_wait: false });
        let open = Standing {
            epoch: 4,
            last_commit: Some(&[0; 32]),
        };
        assert_eq!(place(text, open), Placement::Apply { may_wait: true });
    }

    #[test]
    fn a_message_of_a_later_epoch_waits_for_the_commits_before_it() {
        let device = Standing {
            epoch: 2,
            last_commit: None,
        };
        assert_eq!(place(commit(3, b"c"), device), Placement::Wait);
        let text = Position {
            epoch: 7,
            commit: false,
            bytes: b"t",
        };
        assert_eq!(place(text, device), Placement::Wait);
    }

    #[test]
    fn of_two_commits_in_one_epoch_the_lower_hash_wins_whichever_came_first() {
        let (lower, higher) = rivals();
        let lower_hash = Sha256::digest(&lower).to_vec();
        let higher_hash = Sha256::digest(&higher).to_vec();
        // Applied the higher one first: the lower one, for the same epoch, wins.
        let applied_higher = Standing {
            epoch: 6,
            last_commit: Some(&higher_hash),
        };
        assert_eq!(place(commit(5, &lower), applied_higher), Placement::SwitchTo);
        // Applied the lower one first: the higher one loses and is dropped.
        let applied_lower = Standing {
            epoch: 6,
            last_commit: Some(&lower_hash),
        };
        assert_eq!(place(commit(5, &higher), applied_lower), Placement::Drop);
    }

    #[test]
    fn an_old_commit_is_dropped_once_the_fork_is_settled_or_two_epochs_back() {
        let (lower, higher) = rivals();
        let higher_hash = Sha256::digest(&higher).to_vec();
        let settled = Standing {
            epoch: 6,
            last_commit: None,
        };
        assert_eq!(place(commit(5, &lower), settled), Placement::Drop);
        let later = Standing {
            epoch: 7,
            last_commit: Some(&higher_hash),
        };
        assert_eq!(place(commit(5, &lower), later), Placement::Drop);
    }

    #[test]
    fn an_application_message_overtaken_by_a_commit_still_applies() {
        let text = Position {
            epoch: 3,
            commit: false,
            bytes: b"late",
        };
        let device = Standing {
            epoch: 5,
            last_commit: None,
        };
        assert_eq!(place(text, device), Placement::ApplyLate);
    }
}
