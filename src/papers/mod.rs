//! The registry of papers: key → module. Adding a paper is one module and one line in
//! [`registry`]; what a module implements is [`crate::paper::Paper`].

use anyhow::Result;

use crate::paper::{entry, Entry};

pub mod aas_pinn;
pub mod adapt_unlearn_gan;
pub mod adversarial_linear_mdp;
pub mod aggregate_responses;
pub mod bo_rep;
pub mod colide;
pub mod comp_sum_losses;
pub mod ctrl_u;
pub mod dataset_distillation;
pub mod deep_conjugate_direction;
pub mod disc_vs_gen;
pub mod dual_smoothing;
pub mod elr;
pub mod eq_net;
pub mod fedld;
pub mod ensloss;
pub mod forest_smoothers;
pub mod ftwt_pruning;
pub mod gaqat;
pub mod grokking_lazy_rich;
pub mod hessian_alignment;
pub mod latent_consistency;
pub mod learned_prox;
pub mod lvm_smoothing;
pub mod nested_coteaching;
pub mod neural_bandits;
pub mod optimistic_omd;
pub mod pld_recommender;
pub mod orthogonal_conv;
pub mod rrcm;
pub mod score_estimation;
pub mod self_tuning_networks;
pub mod sgd_stability;
pub mod smoothinv;
pub mod solver_heuristics;
pub mod ps_kd;
pub mod sparse_ot;
pub mod stablemax_grokking;
pub mod tcm_loss;
pub mod udim;
pub mod weight_compander;
pub mod z_loss;

/// Every paper, one line each.
pub fn registry() -> Vec<Entry> {
    vec![
        entry::<aas_pinn::AasPinn>(),
        entry::<adapt_unlearn_gan::AdaptUnlearnGan>(),
        entry::<adversarial_linear_mdp::AdversarialLinearMdp>(),
        entry::<aggregate_responses::AggregateResponses>(),
        entry::<bo_rep::BoRep>(),
        entry::<colide::Colide>(),
        entry::<comp_sum_losses::CompSumLosses>(),
        entry::<ctrl_u::CtrlU>(),
        entry::<dataset_distillation::DatasetDistillation>(),
        entry::<deep_conjugate_direction::DeepConjugateDirection>(),
        entry::<disc_vs_gen::DiscVsGen>(),
        entry::<dual_smoothing::DualSmoothing>(),
        entry::<elr::Elr>(),
        entry::<fedld::FedLd>(),
        entry::<ensloss::EnsLoss>(),
        entry::<forest_smoothers::ForestSmoothers>(),
        entry::<ftwt_pruning::FtwtPruning>(),
        entry::<eq_net::EqNet>(),
        entry::<gaqat::Gaqat>(),
        entry::<grokking_lazy_rich::GrokkingLazyRich>(),
        entry::<hessian_alignment::HessianAlignment>(),
        entry::<latent_consistency::LatentConsistency>(),
        entry::<learned_prox::LearnedProx>(),
        entry::<lvm_smoothing::LvmSmoothing>(),
        entry::<nested_coteaching::NestedCoteaching>(),
        entry::<neural_bandits::NeuralBandits>(),
        entry::<optimistic_omd::OptimisticOmd>(),
        entry::<pld_recommender::PldRecommender>(),
        entry::<orthogonal_conv::OrthogonalConv>(),
        entry::<rrcm::Rrcm>(),
        entry::<score_estimation::ScoreEstimation>(),
        entry::<self_tuning_networks::SelfTuningNetworks>(),
        entry::<sgd_stability::SgdStability>(),
        entry::<smoothinv::SmoothInv>(),
        entry::<solver_heuristics::SolverHeuristics>(),
        entry::<ps_kd::PsKd>(),
        entry::<sparse_ot::SparseOt>(),
        entry::<stablemax_grokking::StablemaxGrokking>(),
        entry::<tcm_loss::TcmLoss>(),
        entry::<udim::Udim>(),
        entry::<weight_compander::WeightCompander>(),
        entry::<z_loss::ZLoss>(),
    ]
}

/// Looks a paper up by key; the error lists the known keys.
pub fn find(key: &str) -> Result<Entry> {
    let all = registry();
    all.iter().find(|e| e.key == key).copied().ok_or_else(|| {
        let known: Vec<&str> = all.iter().map(|e| e.key).collect();
        anyhow::anyhow!("unknown paper `{key}`; known papers: {} (see `reglab list`)", known.join(", "))
    })
}
