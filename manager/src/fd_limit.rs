//! The manager's file-descriptor budget: every connection holds two descriptors (its
//! socket and its queue's eventfd), so at its bounds the manager needs
//! `MAX_CONNECTIONS * 2 + FD_RESERVE`. systemd starts services with a soft
//! `RLIMIT_NOFILE` of 1,024 (and a hard limit far above), which would make `accept`
//! fail at about 500 nodes; so the soft limit is raised to what the bounds need, never
//! past the hard limit, once at start-up.

use crate::listener::MAX_CONNECTIONS;
use hirte_common::bounds::FD_RESERVE;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use std::fmt;

/// Descriptors the manager needs when every bound is reached.
pub const FDS_NEEDED: u64 = MAX_CONNECTIONS as u64 * 2 + FD_RESERVE;

/// What [`raise`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The soft limit already covered the bounds.
    Enough(u64),
    /// The soft limit was raised to this.
    Raised { from: u64, to: u64 },
    /// The hard limit is below what the bounds need: raised as far as it goes.
    Short { to: u64, nodes: u64 },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Enough(n) => write!(f, "open-file limit {n} covers {FDS_NEEDED}"),
            Outcome::Raised { from, to } => write!(f, "open-file limit raised from {from} to {to}"),
            Outcome::Short { to, nodes } => write!(
                f,
                "open-file limit is at most {to} (hard limit), below the {FDS_NEEDED} the \
                 bounds need: connections fail beyond about {nodes} nodes \
                 (raise LimitNOFILE= of hirte.service)"
            ),
        }
    }
}

/// The soft limit to set, given the current soft and hard limits.
pub fn plan(soft: u64, hard: u64) -> Outcome {
    if soft >= FDS_NEEDED {
        Outcome::Enough(soft)
    } else if hard >= FDS_NEEDED {
        Outcome::Raised {
            from: soft,
            to: FDS_NEEDED,
        }
    } else {
        let to = hard.max(soft);
        Outcome::Short {
            to,
            nodes: to.saturating_sub(FD_RESERVE) / 2,
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to cover the manager's bounds.
pub fn raise() -> nix::Result<Outcome> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let outcome = plan(soft, hard);
    match outcome {
        Outcome::Enough(_) => {}
        Outcome::Raised { to, .. } | Outcome::Short { to, .. } => {
            setrlimit(Resource::RLIMIT_NOFILE, to, hard)?;
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~bounds.connections~1]
    #[test]
    fn the_soft_limit_is_raised_to_the_bounds_never_past_the_hard_limit() {
        assert_eq!(FDS_NEEDED, 1088 * 2 + 64);
        assert_eq!(
            plan(1024, 524288),
            Outcome::Raised {
                from: 1024,
                to: 2240
            }
        );
        assert_eq!(plan(4096, 4096), Outcome::Enough(4096));
        assert_eq!(
            plan(1024, 1024),
            Outcome::Short {
                to: 1024,
                nodes: 480
            }
        );
        assert!(plan(1024, 1024).to_string().contains("about 480 nodes"));
    }
}
