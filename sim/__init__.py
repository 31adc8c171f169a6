"""Physics backends (MuJoCo, PyBullet), the scene spec, arm control and scripted skills."""
from taskweave.sim.backend import BACKENDS, Backend, Frame, UnknownBackendError, make_backend
from taskweave.sim.spec import COLORS, CameraSpec, ObjectSpec, SceneSpec, SpecError, ZoneSpec

__all__ = ["BACKENDS", "Backend", "Frame", "UnknownBackendError", "make_backend", "COLORS",
           "CameraSpec", "ObjectSpec", "SceneSpec", "SpecError", "ZoneSpec"]
