//! A simulated world wired for the engine: the image disk, an optional separate data disk, an
//! optional procedural base image, and the engine's environment.

use std::rc::Rc;

use fvd_engine::{BaseImage, BlockDevice, CreateOptions, Devices, Env, FvdError, FvdImage, OpenOptions, Profile};
use fvd_sim::{DeviceProfile, DiskConfig, ProceduralContent, RunError, Seed, Sim, SimDisk, SimEnv};

/// How to build a rig.
#[derive(Debug, Clone)]
pub struct RigConfig {
    /// Image create options (the base image, if any, is filled in from `base_bytes`).
    pub create: CreateOptions,
    /// Base image length; 0 for none.
    pub base_bytes: u64,
    /// Profile of the disk holding the image (and data file).
    pub image_profile: DeviceProfile,
    /// Profile of the base image's disk.
    pub base_profile: DeviceProfile,
    /// Put the data in a separate file.
    pub separate_data: bool,
    /// Events the log keeps for failure reports (does not change the run).
    pub log_tail: usize,
    /// The image format (QED and Parallels use `create.size_bytes`, the base image, and
    /// `create.block_size` as their cluster size when it is a power of two from 4 KiB).
    pub format: crate::campaign::guest::FormatName,
}

/// The world and its devices.
pub struct Rig {
    /// The world.
    pub sim: Sim,
    /// The image disk.
    pub image: SimDisk,
    /// The data disk, when separate.
    pub data: Option<SimDisk>,
    /// The base image disk.
    pub base: Option<SimDisk>,
    /// The base image's content.
    pub base_content: Option<ProceduralContent>,
    /// The engine environment.
    pub env: Rc<dyn Env>,
    /// The create options used.
    pub create: CreateOptions,
    /// The image format.
    pub format: crate::campaign::guest::FormatName,
}

impl std::fmt::Debug for Rig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rig").field("sim", &self.sim).finish_non_exhaustive()
    }
}

/// Why an engine step in the rig failed.
#[derive(Debug)]
pub enum RigError {
    /// The world stopped (stall, time limit or halt).
    Run(RunError),
    /// The engine returned an error.
    Engine(FvdError),
    /// Another format's engine returned an error.
    Format(crate::campaign::guest::ImageError),
}

impl std::fmt::Display for RigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RigError::Run(error) => write!(f, "{error}"),
            RigError::Engine(error) => write!(f, "{error}"),
            RigError::Format(error) => write!(f, "{error}"),
        }
    }
}

impl Rig {
    /// Builds the devices (nothing is created on them yet).
    pub fn new(seed: Seed, config: RigConfig) -> Rig {
        let sim = Sim::with_options(
            seed,
            fvd_sim::SimOptions { log_tail_capacity: config.log_tail, record_all_events: false },
        );
        let handle = sim.handle();
        let mut create = config.create;
        let image_len = 0;
        let image = SimDisk::new(&handle, "image", image_len, DiskConfig::new(config.image_profile.clone()));
        let data = config
            .separate_data
            .then(|| SimDisk::new(&handle, "data", 0, DiskConfig::new(config.image_profile.clone())));
        if config.separate_data {
            create.data_file = Some("image.data".into());
        }
        let (base, base_content) = if config.base_bytes > 0 {
            let content = ProceduralContent { seed: sim.stream(fvd_sim::streams::BASE_CONTENT).next_u64() };
            let disk = SimDisk::with_content(
                &handle,
                "base",
                config.base_bytes,
                DiskConfig::new(config.base_profile.clone()),
                Rc::new(content),
            );
            create.base =
                Some(BaseImage { name: "base.raw".into(), format: "raw".into(), len_bytes: config.base_bytes });
            (Some(disk), Some(content))
        } else {
            (None, None)
        };
        let env: Rc<dyn Env> = Rc::new(SimEnv::new(&handle));
        Rig { sim, image, data, base, base_content, env, create, format: config.format }
    }

    /// The engine's view of the devices.
    pub fn devices(&self) -> Devices {
        Devices {
            image: Rc::new(self.image.clone()),
            data: self.data.as_ref().map(|d| Rc::new(d.clone()) as Rc<dyn fvd_engine::BlockDevice>),
            base: self.base.as_ref().map(|d| Rc::new(d.clone()) as Rc<dyn fvd_engine::BlockDevice>),
        }
    }

    /// The base content and its length in sectors, for the oracle.
    pub fn base_for_oracle(&self) -> Option<(&ProceduralContent, u64)> {
        let base_sectors = self.create.base.as_ref().map_or(0, |b| b.len_bytes.min(self.create.size_bytes) / 512);
        self.base_content.as_ref().map(|c| (c, base_sectors))
    }

    /// Power loss for the whole world: drops every task and timer, resolves the image's (and data
    /// file's) unflushed writes per `plan`, and resets the base image disk (it holds nothing
    /// volatile, but its requests in flight are gone too). Returns the image disk's record.
    pub fn crash(&self, plan: fvd_sim::CrashPlan) -> fvd_sim::CrashRecord {
        self.sim.abort_all_tasks();
        self.sim.clear_progress_hook();
        self.sim.halt_after_events(None);
        let record = self.image.crash(plan);
        if let Some(data) = &self.data {
            data.crash(plan);
        }
        if let Some(base) = &self.base {
            base.crash(fvd_sim::CrashPlan {
                strategy: fvd_sim::CrashStrategy::Clean,
                atomic_unit: fvd_sim::AtomicUnit::Sector,
            });
        }
        record
    }

    /// Creates the image (runs the world).
    pub fn create_image(&self) -> Result<(), RigError> {
        let devices = self.devices();
        let create = self.create.clone();
        self.sim
            .run(async move { FvdImage::create(&devices, &create).await })
            .map_err(RigError::Run)?
            .map_err(RigError::Engine)
    }

    /// The cluster size QED and Parallels images of this rig use: the block size when it is a
    /// power of two from 4 KiB to 1 MiB, else 64 KiB.
    pub fn cluster_bytes(&self) -> u64 {
        self.create.block_size.filter(|b| b.is_power_of_two() && (4096..=1 << 20).contains(b)).unwrap_or(64 << 10)
    }

    /// Creates the image in the rig's format (runs the world).
    pub fn create_guest(&self) -> Result<(), RigError> {
        use crate::campaign::guest::{FormatName, ImageError};
        let format_error = |e: &dyn std::fmt::Display| RigError::Format(ImageError(e.to_string()));
        let size = self.create.size_bytes;
        let cluster = self.cluster_bytes();
        let image: Rc<dyn BlockDevice> = Rc::new(self.image.clone());
        match self.format {
            FormatName::Fvd => self.create_image(),
            FormatName::Qed => {
                let options = fvd_qed::QedCreateOptions {
                    cluster_bytes: cluster,
                    backing_name: self.base.as_ref().map(|_| "base.raw".to_string()),
                    ..fvd_qed::QedCreateOptions::new(size)
                };
                self.sim
                    .run(async move { fvd_qed::create(&*image, &options).await })
                    .map_err(RigError::Run)?
                    .map_err(|e| format_error(&e))
            }
            FormatName::Parallels => self
                .sim
                .run(async move { fvd_parallels::create(&*image, size, cluster).await })
                .map_err(RigError::Run)?
                .map_err(|e| format_error(&e)),
        }
    }

    /// Opens the image in the rig's format for reading and writing (runs the world, including
    /// any recovery: FVD's journal replay, QED's and Parallels' check and repair).
    pub fn open_guest(&self, options: OpenOptions) -> Result<crate::campaign::guest::GuestImage, RigError> {
        use crate::campaign::guest::{FormatName, GuestImage, ImageError};
        let format_error = |e: &dyn std::fmt::Display| RigError::Format(ImageError(e.to_string()));
        let image: Rc<dyn BlockDevice> = Rc::new(self.image.clone());
        let base = self.base.as_ref().map(|d| Rc::new(d.clone()) as Rc<dyn BlockDevice>);
        let env = Rc::clone(&self.env);
        match self.format {
            FormatName::Fvd => self.open_with(options).map(GuestImage::Fvd),
            FormatName::Qed => self
                .sim
                .run(async move { fvd_qed::QedImage::open_writable_with_env(image, base, env).await })
                .map_err(RigError::Run)?
                .map(|qed| GuestImage::Qed(Rc::new(qed)))
                .map_err(|e| format_error(&e)),
            FormatName::Parallels => self
                .sim
                .run(async move { fvd_parallels::ParallelsImage::open_writable_with_env(image, env).await })
                .map_err(RigError::Run)?
                .map(|prl| GuestImage::Parallels(Rc::new(prl)))
                .map_err(|e| format_error(&e)),
        }
    }

    /// Opens the image (runs the world, including any recovery).
    pub fn open(&self, profile: Profile) -> Result<FvdImage, RigError> {
        self.open_with(OpenOptions { read_only: false, profile, ..OpenOptions::default() })
    }

    /// Opens the image with explicit options (copy-on-read, prefetch).
    pub fn open_with(&self, options: OpenOptions) -> Result<FvdImage, RigError> {
        let devices = self.devices();
        let env = Rc::clone(&self.env);
        self.sim
            .run(async move { FvdImage::open(devices, env, options).await })
            .map_err(RigError::Run)?
            .map_err(RigError::Engine)
    }
}
