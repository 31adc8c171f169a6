"""MuJoCo backend: compiles a SceneSpec with mujoco.MjSpec."""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from taskweave.sim import robot as R  # noqa: E402
from taskweave.sim.geometry import container_boxes, look_at_axes, yaw_quat  # noqa: E402
from taskweave.sim.backend import (SEG_NONE, SEG_OBJECT0, SEG_ROBOT, SEG_TABLE,  # noqa: E402
                                   Backend, Frame)
from taskweave.sim.spec import SceneSpec  # noqa: E402

ARM_KP = np.array([4500.0, 4500.0, 3500.0, 3500.0, 2000.0, 2000.0, 2000.0])
FINGER_KP = 2000.0
IK_MAX_ITERS = 4     # DLS iterations per IK call (warm-started, so most calls stop after one or two)
IK_POS_TOL = 5e-4    # metres
IK_ROT_TOL = 5e-3    # radians
TABLE_HALF = (0.45, 0.6, 0.02)
TABLE_CENTER = (0.5, 0.0, -0.02)
_ROBOT_SPEC_CACHE: dict = {}


def _robot_spec() -> mujoco.MjSpec:
    """A fresh MjSpec of the Panda with gravity compensation, a TCP site and actuators."""
    spec = mujoco.MjSpec.from_string(R.panda_urdf_text())
    spec.meshdir = R.PANDA_DIR
    spec.compiler.fusestatic = False
    spec.compiler.discardvisual = True
    for body in spec.bodies:
        if body.name.startswith("panda"):
            body.gravcomp = 1.0
    tcp = spec.body(R.TCP_LINK)
    tcp.add_site(name="tcp", pos=[0, 0, 0], size=[0.005, 0.005, 0.005])
    cam_pos, cx, cy, _ = R.wrist_camera_axes()
    cam_q = np.zeros(4)
    mujoco.mju_mat2Quat(cam_q, np.stack([cx, cy, np.cross(cx, cy)], axis=1).reshape(-1))
    spec.body(R.HAND_LINK).add_camera(name=R.WRIST_CAMERA, pos=list(cam_pos), quat=list(cam_q),
                                      fovy=R.WRIST_CAMERA_FOVY)
    for i, jn in enumerate(R.ARM_JOINTS):
        j = spec.joint(jn)
        j.damping = [1.0, 0.0, 0.0]
        j.armature = 0.1
        a = spec.add_actuator(name=f"act_{jn}", target=jn, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        a.set_to_position(kp=ARM_KP[i], kv=ARM_KP[i] / 15.0)
        a.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
        a.forcerange = [-R.ARM_EFFORT[i], R.ARM_EFFORT[i]]
    for jn in R.FINGER_JOINTS:
        j = spec.joint(jn)
        j.damping = [2.0, 0.0, 0.0]
        j.armature = 0.01
        a = spec.add_actuator(name=f"act_{jn}", target=jn, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        a.set_to_position(kp=FINGER_KP, kv=20.0)
        a.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
        a.forcerange = [-R.FINGER_FORCE, R.FINGER_FORCE]
    eq = spec.add_equality(name="finger_coupling", type=mujoco.mjtEq.mjEQ_JOINT)
    eq.name1, eq.name2 = R.FINGER_JOINTS[1], R.FINGER_JOINTS[0]
    eq.data[:5] = [0, 1, 0, 0, 0]
    for g in spec.geoms:
        g.friction = [R.FINGER_FRICTION, 0.005, 0.0001]
        g.condim = 4
    return spec


class MujocoBackend(Backend):
    """Tabletop Panda world in MuJoCo (CPU physics, EGL/OSMesa offscreen rendering)."""

    name = "mujoco"

    def __init__(self) -> None:
        super().__init__()
        self.model = None
        self.data = None
        self._renderers: dict = {}

    # ---- build -------------------------------------------------------------------------
    def load(self, spec: SceneSpec) -> None:
        """Compile spec into an MjModel and reset to the home posture."""
        spec.validate()
        self.close()
        self.spec = spec
        ms = _robot_spec()
        ms.option.timestep = spec.timestep
        ms.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
        ms.option.impratio = 10.0
        ms.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
        ms.visual.quality.offsamples = 0
        ms.visual.quality.shadowsize = 0
        ms.visual.global_.offwidth = 640
        ms.visual.global_.offheight = 480
        ms.visual.headlight.diffuse = [0.45, 0.45, 0.45]
        ms.visual.headlight.ambient = [0.25, 0.25, 0.25]
        wb = ms.worldbody
        wb.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_BOX, size=list(TABLE_HALF),
                    pos=list(TABLE_CENTER), rgba=[0.75, 0.65, 0.5, 1], friction=[1.0, 0.005, 0.0001],
                    condim=4)
        wb.add_light(pos=[0.5, 0, 1.5], dir=[0, 0, -1], castshadow=False, diffuse=[0.45, 0.45, 0.45])
        for z in spec.zones:
            wb.add_geom(name=f"zone_{z.name}", type=mujoco.mjtGeom.mjGEOM_BOX,
                        size=[z.half_size[0], z.half_size[1], 0.0005],
                        pos=[z.center[0], z.center[1], 0.0005], rgba=
                        list(_zone_rgba(z.color)), contype=0, conaffinity=2)  # kept by discardvisual, never collides
        for o in spec.objects:
            body = wb.add_body(name=o.name, pos=list(o.pos), quat=list(yaw_quat(o.yaw)))
            if not o.fixed:
                body.add_freejoint(name=f"{o.name}_free")
            # priority: the object's friction governs its contacts, as in PyBullet (fingers and table are 1.0)
            common = dict(rgba=list(o.rgba), friction=[o.friction, 0.005, 0.0001], condim=4, priority=1)
            if o.shape == "box":
                body.add_geom(type=mujoco.mjtGeom.mjGEOM_BOX, size=list(o.size), mass=o.mass, **common)
            elif o.shape == "cylinder":
                body.add_geom(type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=list(o.size), mass=o.mass, **common)
            elif o.shape == "sphere":
                body.add_geom(type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[o.size[0], 0, 0], mass=o.mass, **common)
            else:
                boxes = container_boxes(o.size)
                for c, h in boxes:
                    body.add_geom(type=mujoco.mjtGeom.mjGEOM_BOX, size=list(h), pos=list(c),
                                  mass=o.mass / len(boxes), **common)
        for cam in spec.cameras:
            x, y, _ = look_at_axes(cam.pos, cam.target)
            mat = np.stack([x, y, np.cross(x, y)], axis=1).reshape(-1)
            q = np.zeros(4)
            mujoco.mju_mat2Quat(q, mat)
            wb.add_camera(name=cam.name, pos=list(cam.pos), quat=list(q), fovy=cam.fovy)
        self.model = ms.compile()
        self.data = mujoco.MjData(self.model)
        self._scratch = mujoco.MjData(self.model)
        self._step1_time = None
        self._index()
        self.reset_robot(spec.robot_home)

    def _index(self) -> None:
        m = self.model
        self._arm_qadr = np.array([m.jnt_qposadr[m.joint(j).id] for j in R.ARM_JOINTS])
        self._arm_dadr = np.array([m.jnt_dofadr[m.joint(j).id] for j in R.ARM_JOINTS])
        self._finger_qadr = np.array([m.jnt_qposadr[m.joint(j).id] for j in R.FINGER_JOINTS])
        self._finger_dadr = np.array([m.jnt_dofadr[m.joint(j).id] for j in R.FINGER_JOINTS])
        self._qadr = np.concatenate([self._arm_qadr, self._finger_qadr])
        self._dadr = np.concatenate([self._arm_dadr, self._finger_dadr])
        self._tcp = m.site("tcp").id
        self._obj_body = np.array([m.body(o.name).id for o in self.spec.objects], dtype=int)
        self._obj_qadr = {}
        for o in self.spec.objects:
            if not o.fixed:
                self._obj_qadr[o.name] = m.jnt_qposadr[m.joint(f"{o.name}_free").id]
        # body id -> contact name
        names = []
        obj_ids = {b: o.name for b, o in zip(self._obj_body, self.spec.objects)}
        seg = np.zeros(m.ngeom, dtype=np.int32)
        for b in range(m.nbody):
            bname = m.body(b).name
            if b in obj_ids:
                names.append(obj_ids[b])
            elif b == 0:
                names.append("table")
            elif bname in R.FINGER_LINKS:
                names.append(bname)
            else:
                names.append("robot")
        self._body_contact_name = names
        obj_index = {b: i for i, b in enumerate(self._obj_body)}
        for g in range(m.ngeom):
            b = m.geom_bodyid[g]
            if b in obj_index:
                seg[g] = SEG_OBJECT0 + obj_index[b]
            elif b == 0:
                seg[g] = SEG_TABLE
            else:
                seg[g] = SEG_ROBOT
        self._geom_seg = seg
        self._jacp, self._jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        self._J, self._err, self._x6 = np.zeros((6, 7)), np.zeros(6), np.zeros(6)
        self._qbuf, self._qbuf2, self._vbuf = np.zeros(4), np.zeros(4), np.zeros(3)
        self._arm_lo = m.jnt_range[[m.joint(j).id for j in R.ARM_JOINTS], 0]
        self._arm_hi = m.jnt_range[[m.joint(j).id for j in R.ARM_JOINTS], 1]

    def reset_robot(self, q=None) -> None:
        """Put the arm at q (default home) with the gripper open and commands matching."""
        q = R.HOME_Q if q is None else np.asarray(q, dtype=float)
        d = self.data
        d.qpos[self._arm_qadr] = q
        d.qpos[self._finger_qadr] = R.FINGER_MAX
        d.qvel[:] = 0.0
        self.arm_target = q.copy()
        self.gripper_target = R.FINGER_MAX
        self._forward()
        pos, _ = self.ee_pose()
        self.ee_target_pos = pos.copy()
        self.ee_target_yaw = self.ee_yaw()
        self._apply_commands()

    @property
    def dt(self) -> float:
        """Physics timestep in seconds."""
        return float(self.model.opt.timestep)

    def step(self, n: int = 1) -> None:
        """Advance physics n timesteps.

        Each tick ends with mj_step1 (positions, contacts, velocities of the new state), so what is
        sensed matches qpos and restore() (mj_forward) reproduces it exactly; the next call starts with
        mj_step2 under the new controls. n steps cost n mj_step calls, with no extra refresh. Anything
        that writes qpos/qvel directly must call mj_forward afterwards, as set_object_pose does.
        """
        m, d = self.model, self.data
        if n <= 0:
            return
        if d.time != self._step1_time:  # stepped from outside (or never): position stage is stale
            mujoco.mj_step1(m, d)
        mujoco.mj_step2(m, d)
        for _ in range(n - 1):
            mujoco.mj_step(m, d)
        mujoco.mj_step1(m, d)
        self._step1_time = d.time

    def _forward(self) -> None:
        """mj_forward after a state change; the next step() may start with mj_step2."""
        mujoco.mj_forward(self.model, self.data)
        self._step1_time = self.data.time

    def close(self) -> None:
        """Free renderers and the model."""
        for r in self._renderers.values():
            r.close()
        self._renderers = {}
        self.model = self.data = None

    # ---- robot -------------------------------------------------------------------------
    def joint_positions(self) -> np.ndarray:
        """Arm (7) and finger (2) joint positions."""
        return self.data.qpos[self._qadr].copy()

    def joint_velocities(self) -> np.ndarray:
        """Arm (7) and finger (2) joint velocities."""
        return self.data.qvel[self._dadr].copy()

    def ee_pose(self) -> tuple:
        """TCP position and wxyz quaternion."""
        q = np.zeros(4)
        mujoco.mju_mat2Quat(q, self.data.site_xmat[self._tcp])
        return self.data.site_xpos[self._tcp].copy(), q

    def _apply_commands(self) -> None:
        self.data.ctrl[:7] = self.arm_target
        self.data.ctrl[7:9] = self.gripper_target

    def _solve_ik(self, pos, quat) -> tuple:
        """Damped least squares on the TCP site, nullspace toward home, warm-started from the last solution.

        Targets move at most a few centimetres per control tick, so starting from the previous joint
        targets (not the lagging measured posture) usually meets the tolerance in one or two iterations.
        """
        m, s = self.model, self._scratch
        q = np.array(self.arm_target, dtype=float)
        jacp, jacr, J, err = self._jacp, self._jacr, self._J, self._err
        cur, neg, dq_rot, x = self._qbuf, self._qbuf2, self._vbuf, self._x6
        lam2 = 1e-4
        residual = None
        for it in range(IK_MAX_ITERS + 1):
            s.qpos[self._arm_qadr] = q
            mujoco.mj_kinematics(m, s)
            err[:3] = pos - s.site_xpos[self._tcp]
            if it == IK_MAX_ITERS:
                residual = err[:3]
                break
            mujoco.mju_mat2Quat(cur, s.site_xmat[self._tcp])
            mujoco.mju_negQuat(neg, cur)
            mujoco.mju_mulQuat(neg, quat, neg)
            mujoco.mju_quat2Vel(dq_rot, neg, 1.0)
            err[3:] = dq_rot
            if err[:3] @ err[:3] < IK_POS_TOL ** 2 and dq_rot @ dq_rot < IK_ROT_TOL ** 2:
                residual = err[:3]
                break
            mujoco.mj_comPos(m, s)
            mujoco.mj_jacSite(m, s, jacp, jacr, self._tcp)
            J[:3] = jacp[:, self._arm_dadr]
            J[3:] = jacr[:, self._arm_dadr]
            # DLS step plus the damped nullspace projection of a pull toward home, in one solve:
            # q += J^T A^-1 err + (v - J^T A^-1 J v) = v + J^T A^-1 (err - J v), A = J J^T + lam2 I
            v = (R.HOME_Q - q) * 0.1
            A = J @ J.T
            A.flat[::7] += lam2
            mujoco.mju_cholFactor(A, 0.0)
            mujoco.mju_cholSolve(x, A, err - J @ v)
            q += v + J.T @ x
            np.clip(q, self._arm_lo, self._arm_hi, out=q)
        return q, float(np.sqrt(residual @ residual))

    # ---- objects -----------------------------------------------------------------------
    def object_pose(self, name: str) -> tuple:
        """Position and wxyz quaternion of a named object."""
        b = self._obj_body[self._check_object(name)]
        return self.data.xpos[b].copy(), self.data.xquat[b].copy()

    def object_poses(self) -> np.ndarray:
        """(N, 7) positions and quaternions of all objects."""
        return np.concatenate([self.data.xpos[self._obj_body], self.data.xquat[self._obj_body]], axis=1)

    def object_velocity(self, name: str) -> np.ndarray:
        """Linear and angular velocity of a named object (zeros when fixed)."""
        self._check_object(name)
        if name not in self._obj_qadr:
            return np.zeros(6)
        adr = self.model.jnt_dofadr[self.model.joint(f"{name}_free").id]
        v = self.data.qvel[adr:adr + 6]
        return np.concatenate([v[:3], v[3:]])

    def set_object_pose(self, name: str, pos, quat=None) -> None:
        """Teleport a free object (scene setup/perturbation only) with zero velocity."""
        self._check_object(name)
        if name not in self._obj_qadr:
            raise ValueError(f"object {name!r} is fixed and cannot be moved")
        adr = self._obj_qadr[name]
        self.data.qpos[adr:adr + 3] = pos
        self.data.qpos[adr + 3:adr + 7] = [1, 0, 0, 0] if quat is None else quat
        dadr = self.model.jnt_dofadr[self.model.joint(f"{name}_free").id]
        self.data.qvel[dadr:dadr + 6] = 0.0
        self._forward()

    def contacts(self, name: str) -> set:
        """Names of everything touching the object."""
        self._check_object(name)
        return self.all_contacts().get(name, set())

    def all_contacts(self) -> dict:
        """For every object in contact: the set of names it touches."""
        d, m = self.data, self.model
        out: dict = {}
        if d.ncon == 0:
            return out
        names = self._body_contact_name
        for b1, b2 in m.geom_bodyid[d.contact.geom[: d.ncon]]:
            n1, n2 = names[b1], names[b2]
            out.setdefault(n1, set()).add(n2)
            out.setdefault(n2, set()).add(n1)
        return out

    # ---- rendering ---------------------------------------------------------------------
    def render(self, camera: str = "front", width: int = 128, height: int = 128,
               depth: bool = False, segmentation: bool = False) -> Frame:
        """RGB (and optionally depth and segmentation) from a named camera."""
        key = (width, height)
        r = self._renderers.get(key)
        if r is None:
            r = mujoco.Renderer(self.model, height=height, width=width)
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            self._renderers[key] = r
        try:
            cam = self.model.camera(camera).id
        except KeyError:
            names = [c.name for c in self.spec.cameras] + [R.WRIST_CAMERA]
            raise KeyError(f"no camera named {camera!r} (cameras: {', '.join(names)})") from None
        r.update_scene(self.data, camera=cam)
        frame = Frame(rgb=r.render().copy())
        if depth:
            r.enable_depth_rendering()
            r.update_scene(self.data, camera=cam)
            frame.depth = r.render().astype(np.float32).copy()
            r.disable_depth_rendering()
        if segmentation:
            r.enable_segmentation_rendering()
            r.update_scene(self.data, camera=cam)
            raw = r.render()
            r.disable_segmentation_rendering()
            ids, types = raw[..., 0], raw[..., 1]
            seg = np.full(ids.shape, SEG_NONE, dtype=np.int32)
            is_geom = (types == int(mujoco.mjtObj.mjOBJ_GEOM)) & (ids >= 0)
            seg[is_geom] = self._geom_seg[ids[is_geom]]
            frame.segmentation = seg
        return frame

    # ---- state -------------------------------------------------------------------------
    def snapshot(self):
        """Full integration state (qpos, qvel, act, warmstart, ctrl, ...) plus commands."""
        kind = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.zeros(mujoco.mj_stateSize(self.model, kind))
        mujoco.mj_getState(self.model, self.data, state, kind)
        return {"engine": "mujoco", "state": state, "cmd": self._command_state()}

    def restore(self, snap) -> None:
        """Return exactly to a snapshot."""
        if not isinstance(snap, dict) or snap.get("engine") != "mujoco":
            raise ValueError("snapshot was not taken from a MuJoCo backend")
        mujoco.mj_setState(self.model, self.data, snap["state"], mujoco.mjtState.mjSTATE_INTEGRATION)
        self._set_command_state(snap["cmd"])
        self._forward()


def _zone_rgba(color: str) -> tuple:
    from taskweave.sim.spec import COLORS
    r, g, b, _ = COLORS[color]
    return (r, g, b, 0.55)
