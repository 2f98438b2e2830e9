//! [`eventually`]: the one way the tests wait for something to happen. No hand-written sleep
//! loops, and no sleep as synchronisation: a test waits for the condition it needs, bounded.
//! (A sleep stays only where the time itself is the scenario: a client that idles or trickles
//! bytes on purpose, or a check that something does *not* happen within a while.)

use std::fmt::Debug;
use std::time::Duration;

use tokio::time::Instant;

/// The first pause between checks; it doubles up to [`MAX_INTERVAL`].
const FIRST_INTERVAL: Duration = Duration::from_millis(5);
/// The longest pause between checks: conditions are seen within this after they hold.
const MAX_INTERVAL: Duration = Duration::from_millis(100);

/// What a check of [`eventually`] returns: met (with a value for the test), or not yet (with
/// what it saw, for the failure message).
pub trait Outcome {
    type Value;
    type NotYet: Debug;
    fn met(self) -> Result<Self::Value, Self::NotYet>;
}

impl Outcome for bool {
    type Value = ();
    type NotYet = bool;
    fn met(self) -> Result<(), bool> {
        if self { Ok(()) } else { Err(false) }
    }
}

/// Not yet: the check returned `None`.
#[derive(Debug)]
pub struct NoneYet;

impl<T> Outcome for Option<T> {
    type Value = T;
    type NotYet = NoneYet;
    fn met(self) -> Result<T, NoneYet> {
        self.ok_or(NoneYet)
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    type NotYet = E;
    fn met(self) -> Result<T, E> {
        self
    }
}

/// Runs `check` until it is met (`true`, `Some(v)` or `Ok(v)`) and returns its value; checks
/// are a few milliseconds apart at first, at most [`MAX_INTERVAL`] later on. Panics, naming
/// `what` and the last result, when `limit` passes first (a check that hangs counts too).
pub async fn eventually<C: Outcome>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> C,
) -> C::Value {
    let deadline = Instant::now() + limit;
    let mut interval = FIRST_INTERVAL;
    let mut last: Option<C::NotYet> = None;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(outcome) => match outcome.met() {
                Ok(v) => return v,
                Err(not_yet) => last = Some(not_yet),
            },
            Err(_) => panic!(
                "timed out after {limit:?} waiting for {what}; a check was still running at \
                 the deadline; the last one to finish returned {}",
                shown(last.as_ref())
            ),
        }
        let now = Instant::now();
        assert!(
            now < deadline,
            "timed out after {limit:?} waiting for {what}; the last check returned {}",
            shown(last.as_ref())
        );
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

fn shown(last: Option<&impl Debug>) -> String {
    last.map_or_else(|| "nothing".to_owned(), |l| format!("{l:?}"))
}
