//! Numerical pieces for the papers where the model sits inside a numerical method: small dense
//! linear algebra, and DAG structure (acyclicity, graph comparison).

pub mod dag;
pub mod dense;
