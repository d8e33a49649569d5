//! Numerical pieces for the papers where the model sits inside a numerical method: small dense
//! linear algebra, DAG structure (acyclicity, graph comparison), and sparse SPD systems with
//! their Krylov solvers.

pub mod dag;
pub mod dense;
pub mod sparse;
