//! When each image key is probed: every key once per window, spread over the window's ticks in
//! batches recomputed each tick from the keys left and the ticks left. New and changed keys go
//! first, failed ones are tried again soon, and a slow or rate-limited registry only shrinks its
//! own share: its keys wait while the others go on.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU64;
use std::time::Duration;

use tokio::time::Instant;

/// The batch for this tick: the keys not yet probed this window, shared evenly over the ticks
/// left (the last tick of a window takes all that remain).
pub fn batch_size(keys_left: usize, until_window_end: Duration, tick: Duration) -> usize {
    if keys_left == 0 || tick.is_zero() {
        return keys_left;
    }
    let tick_nanos = tick.as_nanos().max(1);
    let ticks_left = until_window_end.as_nanos().div_ceil(tick_nanos).max(1);
    keys_left.div_ceil(usize::try_from(ticks_left).unwrap_or(usize::MAX))
}

#[derive(Clone, Debug)]
pub struct ScheduleSettings {
    pub window: Duration,
    pub tick: Duration,
    /// A key whose probe failed is probed again after this, within the window.
    pub failure_retry: Duration,
    /// Probes in flight per registry: a slow registry holds no more than this.
    pub max_in_flight_per_registry: usize,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            tick: Duration::from_secs(15),
            failure_retry: Duration::from_secs(60),
            max_in_flight_per_registry: 16,
        }
    }
}

/// A key's place in the queue, in 24 bytes: one per image key, thousands of them
/// (docs/architecture.md, "Footprint").
#[derive(Clone, Debug)]
struct Entry {
    last_probe: Option<Stamp>,
    retry_at: Option<Stamp>,
    /// Which of the scheduler's registries: a handful of registries, thousands of keys.
    registry: u32,
    probed_this_window: bool,
    /// New or changed: ahead of the others.
    urgent: bool,
    in_flight: bool,
    /// Where the key stands among keys of equal rank: 8 bits of a fixed hash of it, so that
    /// ranking thousands of keys compares integers and only one pair in 256 compares image
    /// references (every pair did, up to 100 times a second while probes finished, which took
    /// a third of `run`'s CPU at 25,000 keys: docs/architecture.md, "At Kubernetes' limits").
    /// 8 bits keep the entry at 24 bytes.
    order: u8,
}

/// An instant as microseconds since the scheduler's start, plus one: 8 bytes where an
/// `Option<Instant>` takes 16, and never zero, so its `Option` takes 8 too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp(NonZeroU64);

impl Stamp {
    fn at(now: Instant, epoch: Instant) -> Self {
        let micros = u64::try_from(now.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX - 1);
        Stamp(NonZeroU64::MIN.saturating_add(micros))
    }
}

/// The due-queue over image keys.
pub struct Scheduler<K> {
    settings: ScheduleSettings,
    /// What stamps count from.
    epoch: Instant,
    window_start: Instant,
    entries: HashMap<K, Entry>,
    /// The registries keys are in, by the index entries hold.
    registries: Vec<Box<str>>,
    /// How many registries were in use at the last sweep: the next comes when twice as many
    /// (and at least [`REGISTRIES_SWEPT_FROM`]) are held.
    registries_swept_at: usize,
    /// Regular keys this tick may still start: probes that could not start at the tick (a
    /// registry at its in-flight cap) start as earlier ones finish.
    budget: usize,
    /// New or changed keys not started yet (counted at the tick).
    urgent_waiting: usize,
    /// New or changed keys this tick may still start (see [`urgent_quota`]).
    urgent_budget: usize,
}

/// New and changed keys go ahead of the even share, but no more of them per tick than the larger
/// of [`URGENT_PER_TICK`] and the tick's even share of the keys left: a small cluster, a rollout
/// or a new workload is probed within a tick or two, while a cold start or a leadership takeover
/// over 25,000 keys is spread over the window like any other, not sent to the registries at
/// once (docs/operations.md, "Sizing"; docs/architecture.md, "At Kubernetes' limits").
pub fn urgent_quota(share: usize) -> usize {
    share.max(URGENT_PER_TICK)
}

/// A key's place among keys of equal rank: SipHash with fixed keys, so the same in every
/// process and run (tests and replicas see one order), and spread over registries and
/// repositories rather than alphabetical.
fn order_of<K: Hash>(key: &K) -> u8 {
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish().to_le_bytes()[0]
}

/// The new or changed keys a tick may always start (about 17 probes/s at the 15 s tick).
pub const URGENT_PER_TICK: usize = 256;

/// Registries no key uses are dropped only once this many are held.
const REGISTRIES_SWEPT_FROM: usize = 64;

impl<K: Clone + Eq + Hash + Ord> Scheduler<K> {
    /// `phase` shifts the window start (jitter between replicas and clusters).
    pub fn new(settings: ScheduleSettings, now: Instant, phase: Duration) -> Self {
        let window_start = now.checked_sub(phase.min(settings.window)).unwrap_or(now);
        Self {
            settings,
            epoch: now,
            window_start,
            entries: HashMap::new(),
            registries: Vec::new(),
            registries_swept_at: 0,
            budget: 0,
            urgent_waiting: 0,
            urgent_budget: 0,
        }
    }

    pub fn settings(&self) -> &ScheduleSettings {
        &self.settings
    }

    /// Makes the key set exactly `keys` (with each key's registry). Returns the keys removed.
    pub fn sync(&mut self, keys: impl IntoIterator<Item = (K, String)>) -> Vec<K> {
        let mut seen: HashMap<K, String> = keys.into_iter().collect();
        let removed: Vec<K> = self.entries.keys().filter(|k| !seen.contains_key(*k)).cloned().collect();
        for k in &removed {
            self.entries.remove(k);
        }
        for (key, registry) in seen.drain() {
            self.insert(key, &registry);
        }
        removed
    }

    /// A new key (probed soon); a known one stays as it is.
    pub fn insert(&mut self, key: K, registry: &str) {
        if self.entries.contains_key(&key) {
            return;
        }
        let registry = self.registry_id(registry);
        let order = order_of(&key);
        self.entries.insert(
            key,
            Entry {
                last_probe: None,
                retry_at: None,
                registry,
                probed_this_window: false,
                urgent: true,
                in_flight: false,
                order,
            },
        );
    }

    /// The index of `registry`, held from now on.
    fn registry_id(&mut self, registry: &str) -> u32 {
        if let Some(at) = self.registries.iter().position(|held| **held == *registry) {
            return at as u32;
        }
        if self.registries.len() >= REGISTRIES_SWEPT_FROM.max(self.registries_swept_at * 2) {
            self.sweep_registries();
        }
        self.registries.push(registry.into());
        (self.registries.len() - 1) as u32
    }

    /// Drops the registries no key is in any more, renumbering the entries'.
    fn sweep_registries(&mut self) {
        let mut used = vec![false; self.registries.len()];
        for e in self.entries.values() {
            used[e.registry as usize] = true;
        }
        // Each kept registry's new index, by its old one (unused ones are never looked up).
        let mut renumbered = vec![0u32; self.registries.len()];
        let mut kept = Vec::new();
        for (at, registry) in std::mem::take(&mut self.registries).into_iter().enumerate() {
            if used[at] {
                renumbered[at] = kept.len() as u32;
                kept.push(registry);
            }
        }
        self.registries = kept;
        for e in self.entries.values_mut() {
            e.registry = renumbered[e.registry as usize];
        }
        self.registries_swept_at = self.registries.len();
    }

    fn stamp(&self, now: Instant) -> Stamp {
        Stamp::at(now, self.epoch)
    }

    /// A key no workload uses any more.
    pub fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Every key as if new (a replica that just took over leadership): all probed first, at
    /// most [`urgent_quota`] a tick.
    pub fn mark_all_changed(&mut self) {
        for e in self.entries.values_mut() {
            e.urgent = true;
            e.probed_this_window = false;
            e.retry_at = None;
        }
    }

    /// The workloads using a key changed: probe it soon.
    pub fn mark_changed(&mut self, key: &K) {
        if let Some(e) = self.entries.get_mut(key) {
            e.urgent = true;
            e.probed_this_window = false;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn roll_window(&mut self, now: Instant) {
        let window = self.settings.window;
        if now.duration_since(self.window_start) >= window {
            let elapsed = now.duration_since(self.window_start);
            let windows = (elapsed.as_nanos() / window.as_nanos().max(1)) as u32;
            self.window_start += window * windows;
            for e in self.entries.values_mut() {
                e.probed_this_window = false;
            }
        }
    }

    /// A tick: the batch's size is recomputed from the keys and ticks left, and the keys to probe
    /// now are returned, marked in flight. `registry_open` says whether a registry may be asked
    /// now (not paused by a `Retry-After`).
    pub fn next_batch(&mut self, now: Instant, registry_open: impl Fn(&str) -> bool) -> Vec<K> {
        self.roll_window(now);
        let window_end = self.window_start + self.settings.window;
        let keys_left = self.entries.values().filter(|e| !e.probed_this_window && !e.in_flight).count();
        self.budget = batch_size(keys_left, window_end.saturating_duration_since(now), self.settings.tick);
        self.urgent_budget = urgent_quota(self.budget);
        self.urgent_waiting = self.entries.values().filter(|e| e.urgent && !e.in_flight).count();
        self.take(now, registry_open)
    }

    /// Whether finished probes' room should be filled before the next tick: the tick's share is
    /// not all started, or new keys wait. (Failures due again wait for the next tick.)
    pub fn wants_room(&self) -> bool {
        self.budget > 0 || (self.urgent_waiting > 0 && self.urgent_budget > 0)
    }

    /// Between ticks, as probes finish: what the tick's batch could not start for lack of
    /// in-flight room, and urgent or failed keys, start now.
    pub fn take(&mut self, now: Instant, registry_open: impl Fn(&str) -> bool) -> Vec<K> {
        let quota = self.budget;
        let cap = self.settings.max_in_flight_per_registry;
        let now = self.stamp(now);
        let mut in_flight = vec![0usize; self.registries.len()];
        let mut waiting = vec![false; self.registries.len()];
        for e in self.entries.values() {
            if e.in_flight {
                in_flight[e.registry as usize] += 1;
            } else {
                waiting[e.registry as usize] = true;
            }
        }
        // Every registry with a key to start is at its cap: nothing can start (the common case
        // between ticks, when finished probes' room is refilled every few milliseconds).
        if !in_flight.iter().zip(&waiting).any(|(flying, waits)| *waits && *flying < cap) {
            return Vec::new();
        }
        // Whether each registry may be asked now: looked up once, when a key first needs it.
        let mut open: Vec<Option<bool>> = vec![None; self.registries.len()];
        let registries = &self.registries;
        let mut is_open = |registry: u32, in_flight: &[usize]| {
            let at = registry as usize;
            *open[at].get_or_insert_with(|| in_flight[at] < cap && registry_open(&registries[at]))
        };
        // Failures due again first (already probed this window), then new or changed keys,
        // then the least recently probed.
        let rank = |e: &Entry| {
            (
                if e.probed_this_window {
                    0u8
                } else if e.urgent {
                    1
                } else {
                    2
                },
                e.last_probe,
                e.order,
            )
        };
        // Each open registry's due keys, apart: no more of a registry's can start than it has
        // room in flight, so only that many of its best are ranked with the others.
        let mut by_registry: Vec<Vec<(&K, &Entry)>> = vec![Vec::new(); self.registries.len()];
        for (key, entry) in &self.entries {
            let eligible = !entry.in_flight && (!entry.probed_this_window || entry.retry_at.is_some_and(|r| r <= now));
            if eligible && is_open(entry.registry, &in_flight) {
                by_registry[entry.registry as usize].push((key, entry));
            }
        }
        let order = |a: &(&K, &Entry), b: &(&K, &Entry)| rank(a.1).cmp(&rank(b.1)).then_with(|| a.0.cmp(b.0));
        let mut candidates: Vec<(&K, &Entry)> = Vec::new();
        for (mut due, flying) in by_registry.into_iter().zip(&in_flight) {
            let room = cap.saturating_sub(*flying);
            if room < due.len() {
                due.select_nth_unstable_by(room, order);
                due.truncate(room);
            }
            candidates.append(&mut due);
        }
        candidates.sort_by(order);
        let mut batch = Vec::new();
        let (mut regular, mut urgent) = (0, 0);
        for (key, entry) in candidates {
            let retry = entry.probed_this_window;
            let counts_against_quota = !retry && !entry.urgent;
            let counts_as_urgent = !retry && entry.urgent;
            if (counts_against_quota && regular >= quota) || (counts_as_urgent && urgent >= self.urgent_budget) {
                continue;
            }
            let flying = &mut in_flight[entry.registry as usize];
            if *flying >= cap {
                continue;
            }
            *flying += 1;
            if counts_against_quota {
                regular += 1;
            }
            if counts_as_urgent {
                urgent += 1;
            }
            batch.push(key.clone());
        }
        for key in &batch {
            if let Some(e) = self.entries.get_mut(key) {
                e.in_flight = true;
            }
        }
        self.budget = quota.saturating_sub(regular);
        self.urgent_budget = self.urgent_budget.saturating_sub(urgent);
        let urgent_taken = batch.iter().filter(|k| self.entries.get(*k).is_some_and(|e| e.urgent)).count();
        self.urgent_waiting = self.urgent_waiting.saturating_sub(urgent_taken);
        batch
    }

    /// A probe ended; `failed` keys are tried again after `failure_retry`.
    pub fn complete(&mut self, key: &K, now: Instant, failed: bool) {
        let (probed, retry_at) = (self.stamp(now), self.stamp(now + self.settings.failure_retry));
        if let Some(e) = self.entries.get_mut(key) {
            e.in_flight = false;
            e.urgent = false;
            e.probed_this_window = true;
            e.last_probe = Some(probed);
            e.retry_at = failed.then_some(retry_at);
        }
    }

    /// A probe could not start (the registry paused meanwhile): back in the queue as it was.
    pub fn release(&mut self, key: &K) {
        if let Some(e) = self.entries.get_mut(key) {
            e.in_flight = false;
        }
    }

    /// Fraction of keys probed within the current window.
    pub fn coverage(&self) -> f64 {
        if self.entries.is_empty() {
            return 1.0;
        }
        self.entries.values().filter(|e| e.probed_this_window).count() as f64 / self.entries.len() as f64
    }
}

/// A small deterministic PRNG (xorshift64*) for jitter: no dependency, seeded per process.
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn from_entropy() -> Self {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Self::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, max)`.
    pub fn below(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos() as u64;
        if nanos == 0 { Duration::ZERO } else { Duration::from_nanos(self.next() % nanos) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_secs(15);

    #[test]
    fn new_keys_go_first_but_never_more_than_the_even_share_or_the_floor() {
        assert_eq!(urgent_quota(0), URGENT_PER_TICK, "a handful of new keys: all at once");
        assert_eq!(urgent_quota(625), 625, "25,000 keys over 40 ticks: the even share");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_start_over_many_keys_is_spread_and_a_small_one_is_not() {
        let settings = ScheduleSettings { max_in_flight_per_registry: 100_000, ..ScheduleSettings::default() };
        let now = Instant::now();
        let mut large = Scheduler::new(settings.clone(), now, Duration::ZERO);
        large.sync((0..25_000u32).map(|k| (k, "r.example".to_string())));
        assert_eq!(large.next_batch(now, |_| true).len(), 625, "25,000 keys / 40 ticks");
        assert!(large.take(now, |_| true).is_empty(), "the rest waits for the next ticks");
        let mut small = Scheduler::new(settings, now, Duration::ZERO);
        small.sync((0..200u32).map(|k| (k, "r.example".to_string())));
        assert_eq!(small.next_batch(now, |_| true).len(), 200, "under the floor: all at once");
    }

    #[test]
    fn batch_arithmetic() {
        assert_eq!(batch_size(0, Duration::from_secs(600), TICK), 0);
        assert_eq!(batch_size(20_000, Duration::from_secs(600), TICK), 500);
        assert_eq!(batch_size(20_001, Duration::from_secs(600), TICK), 501);
        assert_eq!(batch_size(10, Duration::from_secs(600), TICK), 1);
        assert_eq!(batch_size(300, Duration::from_secs(20), TICK), 150, "two ticks left");
        assert_eq!(batch_size(300, Duration::ZERO, TICK), 300, "the window's end takes the rest");
        assert_eq!(batch_size(7, Duration::from_secs(1), Duration::ZERO), 7);
    }

    #[test]
    fn a_key_costs_its_entry_and_registries_no_key_uses_are_dropped() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        let now = Instant::now();
        let mut scheduler = Scheduler::new(ScheduleSettings::default(), now, Duration::ZERO);
        for i in 0..REGISTRIES_SWEPT_FROM as u32 {
            scheduler.insert(i, &format!("registry-{i}.example"));
            scheduler.insert(i + 1_000, &format!("registry-{i}.example"));
        }
        assert_eq!(scheduler.registries.len(), REGISTRIES_SWEPT_FROM, "one entry per registry, not per key");
        for i in 0..REGISTRIES_SWEPT_FROM as u32 - 1 {
            scheduler.remove(&i);
            scheduler.remove(&(i + 1_000));
        }
        scheduler.insert(7_000, "new.example");
        assert_eq!(scheduler.registries.len(), 2, "swept: the last old registry and the new one");
        let last = REGISTRIES_SWEPT_FROM as u32 - 1;
        let batch = scheduler.next_batch(now, |registry| registry != "new.example");
        assert_eq!(batch, [last, last + 1_000], "keys kept their registry through the renumbering");
        scheduler.complete(&last, now, true);
        let retried = scheduler.take(now + ScheduleSettings::default().failure_retry, |_| true);
        assert!(retried.contains(&last), "a failure is due again after failure_retry: {retried:?}");
    }

    #[test]
    fn jitter_is_bounded() {
        let mut j = Jitter::new(42);
        for _ in 0..1000 {
            assert!(j.below(TICK) < TICK);
        }
        assert_eq!(j.below(Duration::ZERO), Duration::ZERO);
    }
}

#[cfg(test)]
mod cost {
    use std::cell::Cell;
    use std::cmp::Ordering;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{ScheduleSettings, Scheduler};

    thread_local! {
        static COMPARED: Cell<usize> = const { Cell::new(0) };
    }

    /// A key that counts how often it is compared: an image reference's comparison is what
    /// made ranking expensive.
    #[derive(Clone, PartialEq, Eq, Hash, Debug)]
    struct Counted(u32);

    impl PartialOrd for Counted {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }

    impl Ord for Counted {
        fn cmp(&self, other: &Self) -> Ordering {
            COMPARED.with(|c| c.set(c.get() + 1));
            self.0.cmp(&other.0)
        }
    }

    #[test]
    fn ranking_thousands_of_keys_rarely_compares_the_keys_and_a_full_registry_ranks_none() {
        let now = Instant::now();
        let settings = ScheduleSettings { max_in_flight_per_registry: 16, ..ScheduleSettings::default() };
        let mut scheduler = Scheduler::new(settings, now, Duration::ZERO);
        for i in 0..20_000 {
            scheduler.insert(Counted(i), "registry.example");
        }
        COMPARED.with(|c| c.set(0));
        let batch = scheduler.next_batch(now, |_| true);
        assert_eq!(batch.len(), 16, "the registry's cap");
        let compared = COMPARED.with(Cell::get);
        // Ranking 20,000 keys takes some 40,000 comparisons; one in 256 ties on the rank.
        assert!(compared < 2_000, "{compared} key comparisons to pick 16 of 20,000 keys");
        COMPARED.with(|c| c.set(0));
        assert!(scheduler.take(now, |_| true).is_empty(), "the registry is at its cap");
        assert_eq!(COMPARED.with(Cell::get), 0, "nothing ranked while nothing can start");
    }
}
