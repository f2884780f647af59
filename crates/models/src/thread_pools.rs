//! Settings for the thread pools a training or inference process runs on.

/// The environment variable candle reads (once, when it first builds its pool) for how many
/// times a pool thread spins on an empty queue before it sleeps.
const CANDLE_SPIN_LIMIT: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Spins before a candle pool thread sleeps, unless the user set [`CANDLE_SPIN_LIMIT`].
const SPINS: &str = "300";

/// candle runs its element-wise ops on a pool of its own (the `candle-bp-N` threads) beside
/// rayon's, which runs the matrix products; after each job its threads spin 25,000 times (by
/// default) before they sleep. With as many busy threads as cores, that spinning takes the cores
/// the next matrix product needs: in a profile of the f32 LoRA step on 2 cores, 9 % of all samples
/// were that spin, and 300 spins made the step about 14 % faster (BENCHMARKS.md). Sets the limit
/// to 300 unless the environment already sets it. Call at the start of `main`, before any thread
/// starts (setting a variable while other threads read the environment is a race).
pub fn tune_candle_pool() {
    if let Some(value) = spin_limit_to_set(std::env::var_os(CANDLE_SPIN_LIMIT).as_deref()) {
        std::env::set_var(CANDLE_SPIN_LIMIT, value);
    }
}

/// The value to set given the variable's current one: ours when it is unset, none otherwise.
fn spin_limit_to_set(current: Option<&std::ffi::OsStr>) -> Option<&'static str> {
    current.is_none().then_some(SPINS)
}

/// The cores this process may use.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A requested thread count (0: all cores) capped at the cores available, with a warning when
/// it was more: oversubscribed compute threads only wait on each other (256 threads on 2 cores
/// made a short generation 40× slower) and a count like 100000 cannot even be started. `what`
/// names the setting in the warning.
pub fn capped_threads(requested: usize, what: &str) -> (usize, Option<String>) {
    capped_threads_on(requested, available_cores(), what)
}

fn capped_threads_on(requested: usize, cores: usize, what: &str) -> (usize, Option<String>) {
    match requested {
        0 => (cores, None),
        n if n > cores => (cores, Some(format!("{what} = {n} is more than the {cores} core(s) this process may use; using {cores}"))),
        n => (n, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_are_capped_at_the_cores() {
        assert_eq!(capped_threads_on(0, 2, "--threads"), (2, None));
        assert_eq!(capped_threads_on(1, 2, "--threads"), (1, None));
        let (n, w) = capped_threads_on(100_000, 2, "--threads");
        assert_eq!(n, 2);
        assert!(w.unwrap().contains("--threads = 100000"));
    }

    /// Ours when unset; a value the user set (even an empty one) is kept. (The environment
    /// itself is left alone: tests run on several threads of one process.)
    #[test]
    fn the_spin_limit_is_set_only_where_the_user_did_not() {
        assert_eq!(spin_limit_to_set(None), Some("300"));
        assert_eq!(spin_limit_to_set(Some(std::ffi::OsStr::new("25000"))), None);
        assert_eq!(spin_limit_to_set(Some(std::ffi::OsStr::new(""))), None);
    }
}
