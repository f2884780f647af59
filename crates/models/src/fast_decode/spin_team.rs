//! A fixed team of threads that wait for work by spinning, for the many short parallel steps of
//! decoding (about 120 weight products a token, 20–300 µs each): waking a sleeping thread pool
//! costs tens of microseconds a step, a spinning thread starts in well under one. A thread that
//! has had no work for a millisecond sleeps until the next job, so an idle team costs nothing.
//! A job may carry a tail ([`Tail`]) that one worker runs after its share while the caller goes
//! on with serial work (the decoder reads the next product's weights ahead with it); the next
//! job stops the tail before it starts.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A job: called once on every thread of the team with that thread's index (0 is the caller).
type Job = dyn Fn(usize) + Sync;

/// Work for the first worker after its share of a job, while the caller goes on (reading ahead
/// the weights of the next step, say): owns what it reads, and stops soon after the flag it is
/// given turns true (at the start of the next job).
pub type Tail = Arc<dyn Fn(&AtomicBool) + Send + Sync>;

struct Shared {
    /// Bumped for each job; a worker runs a job when it sees a new value.
    generation: AtomicUsize,
    /// Workers that have not finished the current job.
    remaining: AtomicUsize,
    /// The current job, with its lifetime erased: valid until `remaining` reaches 0, which
    /// [`SpinTeam::run`] waits for before it returns.
    job: Mutex<Option<&'static Job>>,
    /// The tail of the current job, taken by worker 1.
    tail: Mutex<Option<Tail>>,
    /// Asks a running tail to stop.
    abort: AtomicBool,
    /// Worker 1 has a tail to run or is running it.
    tail_running: AtomicBool,
    /// A worker's job panicked.
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Workers asleep (or about to wait) on `wake`.
    sleeping: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

/// `threads − 1` workers plus the calling thread.
pub struct SpinTeam {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time: callers on several threads take turns.
    running: Mutex<()>,
}

/// How long a worker spins without work before it sleeps.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_millis(1);

impl SpinTeam {
    /// A team of `threads` (at least 1: the caller alone).
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            job: Mutex::new(None),
            tail: Mutex::new(None),
            abort: AtomicBool::new(false),
            tail_running: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleeping: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads.max(1))
            .map(|index| {
                let s = shared.clone();
                std::thread::Builder::new().name(format!("lowrank-decode-{index}")).spawn(move || worker(&s, index))
            })
            .filter_map(|h| h.ok())
            .collect();
        Self { shared, workers, running: Mutex::new(()) }
    }

    /// Threads that take part in a job (the caller included).
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(i)` for every `i < threads()`, `job(0)` on this thread; returns when all are
    /// done. A job that panics on a worker panics here too.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        self.run_then(job, None)
    }

    /// Runs `work(scratch, i, &mut parts[i])` once for every part on the team: the threads claim
    /// `per_claim` parts at a time in turn (a thread slowed by another process on its core takes
    /// fewer), each with its own `scratch()`; then `tail` as in [`Self::run_then`].
    pub fn share_out<T: Send, S>(&self, parts: &mut [T], per_claim: usize, scratch: fn() -> S, work: &(dyn Fn(&mut S, usize, &mut T) + Sync), tail: Option<Tail>) {
        let cells: Vec<Mutex<&mut T>> = parts.iter_mut().map(Mutex::new).collect();
        let claimed = AtomicUsize::new(0);
        let per_claim = per_claim.max(1);
        self.run_then(
            &|_| {
                let mut s = scratch();
                loop {
                    let first = claimed.fetch_add(per_claim, Ordering::Relaxed);
                    if first >= cells.len() {
                        break;
                    }
                    for (i, cell) in cells.iter().enumerate().skip(first).take(per_claim) {
                        let mut part = cell.lock().unwrap_or_else(|e| e.into_inner());
                        work(&mut s, i, &mut part);
                    }
                }
            },
            tail,
        );
    }

    /// As [`Self::run`]; then worker 1, once its share is done, runs `tail` while this returns
    /// and the caller goes on; the next job stops the tail first (`tail` is dropped without
    /// running on a team of one).
    pub fn run_then(&self, job: &(dyn Fn(usize) + Sync), tail: Option<Tail>) {
        if self.workers.is_empty() {
            job(0);
            return;
        }
        let _turn = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = &self.shared;
        // The previous job's tail, if still running, stops first.
        if s.tail_running.load(Ordering::Acquire) {
            s.abort.store(true, Ordering::Release);
            while s.tail_running.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        }
        s.abort.store(false, Ordering::Release);
        *s.tail.lock().unwrap_or_else(|e| e.into_inner()) = tail;
        // SAFETY: the reference is only used by workers between the generation bump below and
        // their decrement of `remaining`; this function does not return (or unwind) before
        // `remaining` is 0, so the job outlives every use.
        let erased: &'static Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(job) };
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(erased);
        s.remaining.store(self.workers.len(), Ordering::Release);
        s.generation.fetch_add(1, Ordering::SeqCst);
        // A worker about to sleep counts itself first and checks the generation after (both
        // SeqCst), so either it sees the new job or this sees it and wakes it.
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(0)));
        while s.remaining.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a decoding thread panicked");
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins = spins.wrapping_add(1);
            if spins % 1024 == 0 && idle_since.elapsed() > SPIN_BEFORE_SLEEP {
                let guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, Ordering::SeqCst);
                if s.generation.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst) {
                    let _ = s.wake.wait_timeout(guard, Duration::from_millis(100));
                }
                s.sleeping.fetch_sub(1, Ordering::SeqCst);
                idle_since = Instant::now();
            } else {
                std::hint::spin_loop();
            }
        }
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(index))).is_err() {
                s.panicked.store(true, Ordering::Release);
            }
        }
        let tail = if index == 1 { s.tail.lock().unwrap_or_else(|e| e.into_inner()).take() } else { None };
        if tail.is_some() {
            // Set before the job counts as done, so the next job sees it and waits.
            s.tail_running.store(true, Ordering::Release);
        }
        s.remaining.fetch_sub(1, Ordering::AcqRel);
        if let Some(tail) = tail {
            // A panicking tail only loses its read-ahead.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tail(&s.abort)));
            drop(tail);
            s.tail_running.store(false, Ordering::Release);
        }
    }
}

impl Drop for SpinTeam {
    fn drop(&mut self) {
        self.shared.abort.store(true, Ordering::Release);
        self.shared.stop.store(true, Ordering::Release);
        {
            let _guard = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_each_job_once_and_sleeping_workers_wake() {
        let team = SpinTeam::new(3);
        assert_eq!(team.threads(), 3);
        let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for round in 0..200 {
            team.run(&|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            if round == 100 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 200));
    }

    /// A tail runs after the job on worker 1 while the caller goes on, and the next job stops
    /// it before starting.
    #[test]
    fn a_tail_runs_on_while_the_caller_goes_on_and_the_next_job_stops_it() {
        let team = SpinTeam::new(2);
        let started = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(AtomicBool::new(false));
        let (st, sp) = (started.clone(), stopped.clone());
        let tail: Tail = Arc::new(move |abort: &AtomicBool| {
            st.store(true, Ordering::Release);
            while !abort.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            sp.store(true, Ordering::Release);
        });
        team.run_then(&|_| {}, Some(tail));
        // The caller is back while the tail spins until stopped.
        let t0 = Instant::now();
        while !started.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(5) {
            std::hint::spin_loop();
        }
        assert!(started.load(Ordering::Acquire) && !stopped.load(Ordering::Acquire));
        let n = AtomicUsize::new(0);
        team.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert!(stopped.load(Ordering::Acquire));
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }

    /// Every part is worked on exactly once, with its own index, claimed singly or in runs.
    #[test]
    fn share_out_visits_every_part_once() {
        let team = SpinTeam::new(3);
        for per_claim in [1usize, 4, 100] {
            let mut parts = vec![0usize; 37];
            team.share_out(&mut parts, per_claim, || (), &|_, i, p| *p += i + 1, None);
            assert_eq!(parts, (1..=37).collect::<Vec<_>>(), "per_claim {per_claim}");
        }
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_team_goes_on() {
        let team = SpinTeam::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| team.run(&|i| assert_eq!(i, 0, "worker fails"))));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        team.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
