//! Training pieces shared by the papers: optimizer wrappers and schedules beyond tch's own.

pub mod lbfgs;
pub mod orthograd;
