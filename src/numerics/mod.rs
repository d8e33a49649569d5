//! Numerical pieces for the papers where the model sits inside a numerical method: small dense
//! linear algebra, DAG structure (acyclicity, graph comparison), sparse SPD systems with their
//! Krylov solvers, and an adaptive Runge–Kutta ODE solver autograd can see through.

pub mod dag;
pub mod dense;
pub mod ode;
pub mod sparse;
