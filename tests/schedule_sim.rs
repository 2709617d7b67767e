//! Scheduler simulations in paused tokio time: a ten-minute window over 20,000 keys, smooth
//! batches from the cold start on, new keys within two ticks, a rate-limited registry that holds
//! back no one else.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pullcheck::schedule::{ScheduleSettings, Scheduler};
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(600);
const TICK: Duration = Duration::from_secs(15);

fn settings() -> ScheduleSettings {
    ScheduleSettings {
        window: WINDOW,
        tick: TICK,
        failure_retry: Duration::from_secs(60),
        max_in_flight_per_registry: 10_000,
    }
}

fn keys(n: usize, registries: usize) -> Vec<(u32, String)> {
    (0..n as u32).map(|k| (k, format!("registry-{}.example", k as usize % registries))).collect()
}

/// Runs ticks until `end`, completing every probe instantly; returns per-tick batch sizes and
/// when each key was first probed.
async fn run(
    scheduler: &mut Scheduler<u32>,
    end: Instant,
    blocked: &HashSet<String>,
) -> (Vec<usize>, HashMap<u32, Instant>) {
    let mut batches = Vec::new();
    let mut first_probe = HashMap::new();
    while Instant::now() < end {
        let now = Instant::now();
        let batch = scheduler.next_batch(now, |r| !blocked.contains(r));
        batches.push(batch.len());
        for key in batch {
            first_probe.entry(key).or_insert(now);
            scheduler.complete(&key, now, false);
        }
        tokio::time::sleep(TICK).await;
    }
    (batches, first_probe)
}

#[tokio::test(start_paused = true)]
async fn twenty_thousand_keys_are_all_probed_within_one_window_in_smooth_batches() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(settings(), start, Duration::ZERO);
    scheduler.sync(keys(20_000, 7));
    // The first window probes everything, and a cold start is no burst: new keys go first, but
    // no more of them a tick than the window's even share (or 256, whichever is more).
    let (batches, first) = run(&mut scheduler, start + WINDOW, &HashSet::new()).await;
    assert_eq!(first.len(), 20_000, "every key in the first window");
    assert!(first.values().all(|t| *t < start + WINDOW));
    let mean = 20_000.0 / batches.len() as f64;
    let max = *batches.iter().max().unwrap_or(&0) as f64;
    assert!(max <= 1.5 * mean, "first window: largest batch {max} vs mean {mean:.1}: {batches:?}");

    // Steady state: the next window spreads 20,000 probes over its 40 ticks.
    let window_two = Instant::now();
    let (batches, _) = run(&mut scheduler, window_two + WINDOW, &HashSet::new()).await;
    let total: usize = batches.iter().sum();
    assert_eq!(total, 20_000, "each key once per window: {batches:?}");
    let mean = total as f64 / batches.len() as f64;
    let max = *batches.iter().max().unwrap_or(&0) as f64;
    assert!(max <= 1.5 * mean, "largest batch {max} vs mean {mean:.1}: {batches:?}");
    assert!((scheduler.coverage() - 1.0).abs() < f64::EPSILON);
}

#[tokio::test(start_paused = true)]
async fn new_keys_are_probed_within_two_ticks() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(settings(), start, Duration::ZERO);
    scheduler.sync(keys(5_000, 3));
    run(&mut scheduler, start + WINDOW + TICK * 3, &HashSet::new()).await;
    // Mid-window, 100 new keys arrive.
    let mut more = keys(5_000, 3);
    more.extend((100_000..100_100).map(|k| (k, "registry-new.example".to_string())));
    scheduler.sync(more);
    let arrived = Instant::now();
    let (_, first) = run(&mut scheduler, arrived + TICK * 2, &HashSet::new()).await;
    for k in 100_000..100_100u32 {
        let at = first.get(&k).copied();
        assert!(at.is_some_and(|t| t < arrived + TICK * 2), "key {k} first probed at {at:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_registry_does_not_delay_the_others() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(settings(), start, Duration::ZERO);
    let all = keys(6_000, 3);
    scheduler.sync(all.clone());
    let blocked: HashSet<String> = ["registry-0.example".to_string()].into();
    let (_, first) = run(&mut scheduler, start + WINDOW, &blocked).await;
    let (held, others): (Vec<_>, Vec<_>) = all.iter().partition(|(_, r)| blocked.contains(r));
    assert!(others.iter().all(|(k, _)| first.contains_key(k)), "the other registries are covered");
    assert!(held.iter().all(|(k, _)| !first.contains_key(k)), "the paused registry is not asked");

    // When the pause ends, its keys go first and the window still completes.
    let (_, later) = run(&mut scheduler, Instant::now() + WINDOW, &HashSet::new()).await;
    assert!(held.iter().all(|(k, _)| later.contains_key(k)));
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_soon_and_slow_registries_hold_only_their_share() {
    let start = Instant::now();
    let mut scheduler =
        Scheduler::new(ScheduleSettings { max_in_flight_per_registry: 5, ..settings() }, start, Duration::ZERO);
    scheduler.sync(keys(100, 2));
    let batch = scheduler.next_batch(Instant::now(), |_| true);
    assert_eq!(batch.len(), 10, "five in flight per registry");
    // registry-0's probes hang; registry-1's complete, one of them failing.
    let failing = *batch.iter().find(|k| **k % 2 == 1).expect("registry-1 got keys");
    for k in batch.iter().filter(|k| **k % 2 == 1) {
        scheduler.complete(k, Instant::now(), *k == failing);
    }
    tokio::time::advance(TICK).await;
    let next = scheduler.next_batch(Instant::now(), |_| true);
    assert!(next.iter().all(|k| k % 2 == 1), "the slow registry gets nothing more: {next:?}");
    assert_eq!(next.len(), 5);
    for k in &next {
        scheduler.complete(k, Instant::now(), false);
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    let retry = scheduler.next_batch(Instant::now(), |_| true);
    assert!(retry.contains(&failing), "the failed key {failing} is tried again after a minute: {retry:?}");
}

#[tokio::test(start_paused = true)]
async fn what_a_tick_could_not_start_starts_as_room_frees() {
    let start = Instant::now();
    let mut scheduler =
        Scheduler::new(ScheduleSettings { max_in_flight_per_registry: 4, ..settings() }, start, Duration::ZERO);
    scheduler.sync(keys(4_000, 1));
    // Window one: every key is new; let it pass with everything probed.
    let mut probed = 0;
    while probed < 4_000 {
        let batch = scheduler.next_batch(Instant::now(), |_| true);
        let mut more = batch;
        while !more.is_empty() {
            for k in &more {
                scheduler.complete(k, Instant::now(), false);
                probed += 1;
            }
            more = scheduler.take(Instant::now(), |_| true);
        }
        tokio::time::advance(TICK).await;
    }
    tokio::time::advance((start + WINDOW).duration_since(Instant::now())).await;
    // Window two, first tick: its share is 4,000 keys / 40 ticks = 100, but only 4 fit in flight.
    let first = scheduler.next_batch(Instant::now(), |_| true);
    assert_eq!(first.len(), 4);
    let mut started = first.len();
    let mut flying = first;
    while let Some(k) = flying.pop() {
        scheduler.complete(&k, Instant::now(), false);
        let more = scheduler.take(Instant::now(), |_| true);
        started += more.len();
        flying.extend(more);
    }
    assert_eq!(started, 100, "the tick's whole share started, four at a time");
    assert!(scheduler.take(Instant::now(), |_| true).is_empty(), "and no more before the next tick");
}
