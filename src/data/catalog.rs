//! The datasets reglab knows: their files with SHA-256 checksums, where the canonical copies
//! are, how to get them on a machine without internet, and their licences.
//!
//! A dataset is present when one of its file sets is complete in `<data dir>/<name>/`. The first
//! set is the canonical download (`reglab data fetch NAME`); later ones are alternatives that
//! package registries carry (e.g. RecBole's copy of MovieLens-100k).
//!
//! Checksums of the canonical files are those TensorFlow Datasets records (`url_checksums/`);
//! they agree with the publishers' MD5s (torchvision, Zalando's README, the CIFAR page). Those of
//! the registry copies were taken from the packages named in each entry.

/// One file of a dataset, as stored under `<data dir>/<dataset>/`.
#[derive(Debug, Clone, Copy)]
pub struct DataFile {
    pub name: &'static str,
    pub sha256: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct DatasetInfo {
    pub name: &'static str,
    pub what: &'static str,
    pub licence: &'static str,
    /// Canonical location; files are fetched from `{base_url}{file name}`.
    pub base_url: &'static str,
    /// Complete file sets; the first is what `fetch` downloads.
    pub file_sets: &'static [&'static [DataFile]],
    /// How to get it here, without internet (shown by `reglab data list`).
    pub offline: &'static str,
    /// Files ship inside the repository.
    pub bundled: bool,
}

pub const DIGITS: DatasetInfo = DatasetInfo {
    name: "digits",
    what: "1797 8×8 handwritten digits, 10 classes (UCI optical digits, via scikit-learn 1.9.1)",
    licence: "CC BY 4.0 (UCI)",
    base_url: "",
    file_sets: &[&[DataFile { name: "digits.csv.gz", sha256: "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22" }]],
    offline: "bundled in the repository (data/digits/); `reglab data fetch digits` copies it into another data directory",
    bundled: true,
};

pub const FASHION_MNIST: DatasetInfo = DatasetInfo {
    name: "fashion_mnist",
    what: "70000 28×28 grey images of clothing, 10 classes (60000 train + 10000 test)",
    licence: "MIT (Zalando SE)",
    base_url: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    // The canonical files (checksums as TensorFlow Datasets records them), then Debian's
    // `dataset-fashion-mnist` 0.0~git20200523.55506a9-1, whose gzip files were recompressed (24
    // bytes smaller each) around the same IDX contents.
    file_sets: &[
        &[
            DataFile { name: "train-images-idx3-ubyte.gz", sha256: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84" },
            DataFile { name: "train-labels-idx1-ubyte.gz", sha256: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845" },
            DataFile { name: "t10k-images-idx3-ubyte.gz", sha256: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073" },
            DataFile { name: "t10k-labels-idx1-ubyte.gz", sha256: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5" },
        ],
        &[
            DataFile { name: "train-images-idx3-ubyte.gz", sha256: "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7" },
            DataFile { name: "train-labels-idx1-ubyte.gz", sha256: "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056" },
            DataFile { name: "t10k-images-idx3-ubyte.gz", sha256: "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa" },
            DataFile { name: "t10k-labels-idx1-ubyte.gz", sha256: "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05" },
        ],
    ],
    offline: "`make data` (apt-get install dataset-fashion-mnist, then `reglab data fetch fashion_mnist --from /usr/share/datasets/fashion-mnist`)",
    bundled: false,
};

pub const MNIST: DatasetInfo = DatasetInfo {
    name: "mnist",
    what: "70000 28×28 handwritten digits, 10 classes (60000 train + 10000 test)",
    licence: "CC BY-SA 3.0 (Y. LeCun, C. Cortes)",
    base_url: "https://storage.googleapis.com/cvdf-datasets/mnist/",
    file_sets: &[&[
        DataFile { name: "train-images-idx3-ubyte.gz", sha256: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609" },
        DataFile { name: "train-labels-idx1-ubyte.gz", sha256: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c" },
        DataFile { name: "t10k-images-idx3-ubyte.gz", sha256: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6" },
        DataFile { name: "t10k-labels-idx1-ubyte.gz", sha256: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6" },
    ]],
    offline: "not available from the package registries: `reglab data fetch mnist` where there is internet",
    bundled: false,
};

pub const CIFAR10: DatasetInfo = DatasetInfo {
    name: "cifar10",
    what: "60000 32×32 colour images, 10 classes (50000 train + 10000 test), binary version",
    licence: "no licence stated (A. Krizhevsky, 2009); cite the tech report",
    base_url: "https://www.cs.toronto.edu/~kriz/",
    file_sets: &[&[DataFile { name: "cifar-10-binary.tar.gz", sha256: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd" }]],
    offline: "not available from the package registries: `reglab data fetch cifar10` where there is internet",
    bundled: false,
};

pub const CIFAR100: DatasetInfo = DatasetInfo {
    name: "cifar100",
    what: "60000 32×32 colour images, 100 fine classes (50000 train + 10000 test), binary version",
    licence: "no licence stated (A. Krizhevsky, 2009); cite the tech report",
    base_url: "https://www.cs.toronto.edu/~kriz/",
    file_sets: &[&[DataFile { name: "cifar-100-binary.tar.gz", sha256: "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec" }]],
    offline: "not available from the package registries: `reglab data fetch cifar100` where there is internet",
    bundled: false,
};

pub const MOVIELENS_100K: DatasetInfo = DatasetInfo {
    name: "movielens_100k",
    what: "100000 ratings (1–5) of 1682 movies by 943 users",
    licence: "GroupLens research licence: no redistribution (never commit these files)",
    base_url: "https://files.grouplens.org/datasets/movielens/",
    file_sets: &[
        &[DataFile { name: "ml-100k.zip", sha256: "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229" }],
        &[DataFile { name: "ml-100k.inter", sha256: "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff" }],
    ],
    offline: "`make data` (extracts ml-100k.inter from the recbole 1.2.1 wheel, then `reglab data fetch movielens_100k --from DIR`)",
    bundled: false,
};

/// Every dataset with files. (`csv` reads a user's own file and is not listed here.)
pub const ALL: &[DatasetInfo] = &[DIGITS, FASHION_MNIST, MNIST, CIFAR10, CIFAR100, MOVIELENS_100K];

/// Looks a dataset up; the error lists the known names.
pub fn find(name: &str) -> anyhow::Result<&'static DatasetInfo> {
    ALL.iter().find(|d| d.name == name).ok_or_else(|| {
        let known: Vec<&str> = ALL.iter().map(|d| d.name).chain(["csv"]).collect();
        anyhow::anyhow!("unknown dataset `{name}`; known datasets: {}", known.join(", "))
    })
}
