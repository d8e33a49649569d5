//! Online learning and bandit loops with exact regret bookkeeping.

pub mod bandit;
