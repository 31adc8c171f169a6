"""PyBullet backend (DIRECT mode): compiles a SceneSpec through the PyBullet API."""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
import pybullet as p
from pybullet_utils.bullet_client import BulletClient

from taskweave.sim import robot as R
from taskweave.sim.geometry import container_boxes, look_at_axes, quat_matrix, yaw_quat
from taskweave.sim.backend import SEG_NONE, SEG_OBJECT0, SEG_ROBOT, SEG_TABLE, Backend, Frame
from taskweave.sim.spec import COLORS, SceneSpec

TABLE_HALF = (0.45, 0.6, 0.02)
TABLE_CENTER = (0.5, 0.0, -0.02)


def joint_index(client, body: int) -> dict:
    """Joint indices of a loaded body by joint name, and by 'link:<child link name>' (a link's index is its joint's)."""
    names = {}
    for j in range(client.getNumJoints(body)):
        info = client.getJointInfo(body, j)
        names[info[1].decode()] = j
        names["link:" + info[12].decode()] = j
    return names


@contextlib.contextmanager
def _quiet_stdout():
    """Silence the C library's stdout (PyBullet prints `argv[0]=` on every DIRECT connection).

    Best effort: where file descriptors cannot be duplicated (no real stdout, or the generated-task sandbox,
    which disables os.dup), the line is simply printed.
    """
    saved = devnull = None
    try:
        fd = sys.stdout.fileno()
        sys.stdout.flush()
        saved = os.dup(fd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
    except Exception:  # noqa: BLE001 - any refusal means: do not silence
        for f in (saved, devnull):
            if f is not None:
                os.close(f)
        yield
        return
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _xyzw(q) -> list:
    return [q[1], q[2], q[3], q[0]]


def _wxyz(q) -> np.ndarray:
    return np.array([q[3], q[0], q[1], q[2]])


class PybulletBackend(Backend):
    """Tabletop Panda world in PyBullet, DIRECT mode, TinyRenderer."""

    name = "pybullet"

    def __init__(self) -> None:
        super().__init__()
        self.client = None
        self._states: list = []
        self._cache: dict = {}  # per-physics-state reads (poses, joints, TCP); cleared on every state change

    def load(self, spec: SceneSpec) -> None:
        """Reset the simulation and build spec, robot at home, gripper open."""
        spec.validate()
        if self.client is None:
            with _quiet_stdout():
                self.client = BulletClient(connection_mode=p.DIRECT)
        c = self.client
        c.resetSimulation()
        self._cache.clear()
        self._states = []
        self.spec = spec
        c.setGravity(0, 0, -9.81)
        c.setPhysicsEngineParameter(fixedTimeStep=spec.timestep, numSolverIterations=50,
                                    deterministicOverlappingPairs=1)
        self.robot = c.loadURDF(R.PANDA_URDF, [0, 0, 0], [0, 0, 0, 1], useFixedBase=True,
                                flags=p.URDF_USE_INERTIA_FROM_FILE)
        names = joint_index(c, self.robot)
        self._arm_j = [names[j] for j in R.ARM_JOINTS]
        self._finger_j = [names[j] for j in R.FINGER_JOINTS]
        self._tcp_link = names["link:" + R.TCP_LINK]
        self._hand_link = names["link:" + R.HAND_LINK]
        self._finger_links = {names["link:" + n]: n for n in R.FINGER_LINKS}
        for j in self._finger_j:
            c.changeDynamics(self.robot, j, lateralFriction=R.FINGER_FRICTION, spinningFriction=0.02,
                             frictionAnchor=True)
        # Couple the fingers like the real Panda's single-motor gripper.
        gear = c.createConstraint(self.robot, self._finger_j[0], self.robot, self._finger_j[1], p.JOINT_GEAR,
                                  [1, 0, 0], [0, 0, 0], [0, 0, 0])
        c.changeConstraint(gear, gearRatio=-1, erp=0.1, maxForce=50)
        tcol = c.createCollisionShape(p.GEOM_BOX, halfExtents=TABLE_HALF)
        tvis = c.createVisualShape(p.GEOM_BOX, halfExtents=TABLE_HALF, rgbaColor=[0.75, 0.65, 0.5, 1])
        self.table = c.createMultiBody(0, tcol, tvis, TABLE_CENTER)
        c.changeDynamics(self.table, -1, lateralFriction=1.0)
        for z in spec.zones:
            r, g, b, _ = COLORS[z.color]
            vis = c.createVisualShape(p.GEOM_BOX, halfExtents=[z.half_size[0], z.half_size[1], 0.0005],
                                      rgbaColor=[r, g, b, 0.55])
            c.createMultiBody(0, -1, vis, [z.center[0], z.center[1], 0.0005])
        self._obj_ids = []
        for o in spec.objects:
            self._obj_ids.append(self._make_object(o))
        self._uid_name = {uid: o.name for uid, o in zip(self._obj_ids, spec.objects)}
        self._seg = {self.table: SEG_TABLE, self.robot: SEG_ROBOT}
        for i, uid in enumerate(self._obj_ids):
            self._seg[uid] = SEG_OBJECT0 + i
        self._proj = {}
        self.reset_robot(spec.robot_home)

    def _make_object(self, o) -> int:
        c = self.client
        rgba = list(o.rgba)
        if o.shape == "box":
            col = c.createCollisionShape(p.GEOM_BOX, halfExtents=list(o.size))
            vis = c.createVisualShape(p.GEOM_BOX, halfExtents=list(o.size), rgbaColor=rgba)
        elif o.shape == "cylinder":
            col = c.createCollisionShape(p.GEOM_CYLINDER, radius=o.size[0], height=2 * o.size[1])
            vis = c.createVisualShape(p.GEOM_CYLINDER, radius=o.size[0], length=2 * o.size[1], rgbaColor=rgba)
        elif o.shape == "sphere":
            col = c.createCollisionShape(p.GEOM_SPHERE, radius=o.size[0])
            vis = c.createVisualShape(p.GEOM_SPHERE, radius=o.size[0], rgbaColor=rgba)
        else:
            boxes = container_boxes(o.size)
            n = len(boxes)
            col = c.createCollisionShapeArray([p.GEOM_BOX] * n, halfExtents=[list(h) for _, h in boxes],
                                              collisionFramePositions=[list(cc) for cc, _ in boxes])
            vis = c.createVisualShapeArray([p.GEOM_BOX] * n, halfExtents=[list(h) for _, h in boxes],
                                           visualFramePositions=[list(cc) for cc, _ in boxes],
                                           rgbaColors=[rgba] * n)
        mass = 0.0 if o.fixed else o.mass
        uid = c.createMultiBody(mass, col, vis, list(o.pos), _xyzw(yaw_quat(o.yaw)))
        c.changeDynamics(uid, -1, lateralFriction=o.friction, spinningFriction=0.01, rollingFriction=0.0001)
        return uid

    def reset_robot(self, q=None) -> None:
        """Put the arm at q (default home), gripper open, commands matching."""
        q = R.HOME_Q if q is None else np.asarray(q, dtype=float)
        self._cache.clear()
        for j, v in zip(self._arm_j, q):
            self.client.resetJointState(self.robot, j, v, 0.0)
        for j in self._finger_j:
            self.client.resetJointState(self.robot, j, R.FINGER_MAX, 0.0)
        self.arm_target = q.copy()
        self.gripper_target = R.FINGER_MAX
        pos, _ = self.ee_pose()
        self.ee_target_pos = pos.copy()
        self.ee_target_yaw = self.ee_yaw()
        self._apply_commands()

    @property
    def dt(self) -> float:
        """Physics timestep in seconds."""
        return float(self.spec.timestep)

    def step(self, n: int = 1) -> None:
        """Advance physics n timesteps."""
        self._cache.clear()
        s = self.client.stepSimulation
        for _ in range(n):
            s()

    def close(self) -> None:
        """Disconnect the physics client."""
        if self.client is not None:
            try:
                self.client.disconnect()
            except Exception:  # already disconnected
                pass
            self.client = None

    def __del__(self):
        self.close()

    # ---- robot -------------------------------------------------------------------------
    def joint_positions(self) -> np.ndarray:
        """Arm (7) and finger (2) joint positions."""
        q = self._cache.get("q")
        if q is None:  # read once per physics state (the cache is cleared whenever the state changes)
            st = self.client.getJointStates(self.robot, self._arm_j + self._finger_j)
            q = self._cache["q"] = np.array([s[0] for s in st])
        return q.copy()

    def joint_velocities(self) -> np.ndarray:
        """Arm (7) and finger (2) joint velocities."""
        st = self.client.getJointStates(self.robot, self._arm_j + self._finger_j)
        return np.array([s[1] for s in st])

    def ee_pose(self) -> tuple:
        """TCP position and wxyz quaternion."""
        ee = self._cache.get("ee")
        if ee is None:
            ls = self.client.getLinkState(self.robot, self._tcp_link, computeForwardKinematics=True)
            ee = self._cache["ee"] = (np.array(ls[4]), _wxyz(ls[5]))
        return ee[0].copy(), ee[1].copy()

    def _apply_commands(self) -> None:
        c = self.client
        c.setJointMotorControlArray(self.robot, self._arm_j, p.POSITION_CONTROL,
                                    targetPositions=list(self.arm_target), forces=list(R.ARM_EFFORT),
                                    positionGains=[0.1] * 7)
        c.setJointMotorControlArray(self.robot, self._finger_j, p.POSITION_CONTROL,
                                    targetPositions=[self.gripper_target] * 2, forces=[R.FINGER_FORCE] * 2)

    def _solve_ik(self, pos, quat) -> tuple:
        """PyBullet's damped IK with the nullspace pulled toward home."""
        c = self.client
        sol = c.calculateInverseKinematics(
            self.robot, self._tcp_link, list(pos), _xyzw(quat),
            lowerLimits=list(R.ARM_LOWER) + [0, 0], upperLimits=list(R.ARM_UPPER) + [0.04, 0.04],
            jointRanges=list(R.ARM_UPPER - R.ARM_LOWER) + [0.04, 0.04],
            restPoses=list(R.HOME_Q) + [0.04, 0.04], maxNumIterations=20, residualThreshold=1e-4)
        q = np.clip(np.array(sol[:7]), R.ARM_LOWER, R.ARM_UPPER)
        return q, 0.0

    # ---- objects -----------------------------------------------------------------------
    def object_pose(self, name: str) -> tuple:
        """Position and wxyz quaternion of a named object."""
        uid = self._obj_ids[self._check_object(name)]
        pos, q = self.client.getBasePositionAndOrientation(uid)
        return np.array(pos), _wxyz(q)

    def object_poses(self) -> np.ndarray:
        """(N, 7) positions and quaternions of all objects."""
        out = self._cache.get("poses")
        if out is None:
            g = self.client.getBasePositionAndOrientation
            out = self._cache["poses"] = np.zeros((len(self._obj_ids), 7))
            for i, uid in enumerate(self._obj_ids):
                pos, q = g(uid)
                out[i, :3] = pos
                out[i, 3:] = (q[3], q[0], q[1], q[2])
        return out.copy()

    def object_velocity(self, name: str) -> np.ndarray:
        """Linear and angular velocity of a named object."""
        lin, ang = self.client.getBaseVelocity(self._obj_ids[self._check_object(name)])
        return np.array(list(lin) + list(ang))

    def set_object_pose(self, name: str, pos, quat=None) -> None:
        """Teleport a free object (scene setup/perturbation only) with zero velocity."""
        i = self._check_object(name)
        if self.spec.objects[i].fixed:
            raise ValueError(f"object {name!r} is fixed and cannot be moved")
        q = [0, 0, 0, 1] if quat is None else _xyzw(quat)
        self._cache.clear()
        self.client.resetBasePositionAndOrientation(self._obj_ids[i], list(pos), q)
        self.client.resetBaseVelocity(self._obj_ids[i], [0, 0, 0], [0, 0, 0])

    def _name(self, uid: int, link: int) -> str:
        if uid == self.robot:
            return self._finger_links.get(link, "robot")
        if uid == self.table:
            return "table"
        return self._uid_name.get(uid, "world")

    def contacts(self, name: str) -> set:
        """Names of everything touching the object."""
        uid = self._obj_ids[self._check_object(name)]
        return {self._name(cp[2], cp[4]) for cp in self.client.getContactPoints(bodyA=uid)}

    def all_contacts(self) -> dict:
        """For every object in contact: the set of names it touches."""
        out: dict = {}
        for cp in self.client.getContactPoints():
            n1, n2 = self._name(cp[1], cp[3]), self._name(cp[2], cp[4])
            out.setdefault(n1, set()).add(n2)
            out.setdefault(n2, set()).add(n1)
        return out

    # ---- rendering ---------------------------------------------------------------------
    def render(self, camera: str = "front", width: int = 128, height: int = 128,
               depth: bool = False, segmentation: bool = False) -> Frame:
        """TinyRenderer RGB (and optionally depth and segmentation) from a named camera."""
        cams = {c.name: c for c in self.spec.cameras}
        if camera == R.WRIST_CAMERA and camera not in cams:
            ls = self.client.getLinkState(self.robot, self._hand_link, computeForwardKinematics=True)
            rot = quat_matrix(_wxyz(ls[5]))
            local, _, up_local, fwd = R.wrist_camera_axes()
            eye = np.asarray(ls[4]) + rot @ local
            target, up, fovy = eye + rot @ fwd, rot @ up_local, R.WRIST_CAMERA_FOVY
        elif camera in cams:
            cam = cams[camera]
            eye, target, fovy = cam.pos, cam.target, cam.fovy
            _, up, _ = look_at_axes(cam.pos, cam.target)
        else:
            raise KeyError(f"no camera named {camera!r} (cameras: {', '.join([*cams, R.WRIST_CAMERA])})")
        view = self.client.computeViewMatrix(list(eye), list(target), list(up))
        near, far = 0.01, 5.0
        proj = self.client.computeProjectionMatrixFOV(fovy, width / height, near, far)
        flags = 0 if segmentation else p.ER_NO_SEGMENTATION_MASK
        w, h, rgba, dbuf, seg = self.client.getCameraImage(width, height, view, proj, renderer=p.ER_TINY_RENDERER,
                                                            flags=flags, shadow=0)
        rgba = np.asarray(rgba, dtype=np.uint8).reshape(h, w, 4)
        frame = Frame(rgb=rgba[..., :3].copy())
        if depth:
            d = np.asarray(dbuf, dtype=np.float32).reshape(h, w)
            frame.depth = (far * near / (far - (far - near) * d)).astype(np.float32)
        if segmentation:
            raw = np.asarray(seg, dtype=np.int64).reshape(h, w)
            out = np.full(raw.shape, SEG_NONE, dtype=np.int32)
            for uid, sid in self._seg.items():
                out[raw == uid] = sid
            frame.segmentation = out
        return frame

    # ---- state -------------------------------------------------------------------------
    def snapshot(self):
        """In-memory saveState (contacts included) plus commands."""
        sid = self.client.saveState()
        self._states.append(sid)
        return {"engine": "pybullet", "client": id(self.client), "state": sid, "cmd": self._command_state()}

    def restore(self, snap) -> None:
        """Return exactly to a snapshot of the current scene."""
        if not isinstance(snap, dict) or snap.get("engine") != "pybullet" or snap["state"] not in self._states \
                or snap["client"] != id(self.client):
            raise ValueError("snapshot was not taken from this PyBullet scene")
        self._cache.clear()
        self.client.restoreState(stateId=snap["state"])
        self._set_command_state(snap["cmd"])
