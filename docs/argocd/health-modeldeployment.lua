-- Argo CD health check for kubetune.dev/ModelDeployment (resource.customizations.health.kubetune.dev_ModelDeployment).
-- Tested by tests/chart/test_argocd_health.py.
--   Pending, Blocked, Deploying, Progressing -> Progressing (Blocked: waiting for the source FineTuneJob to
--                                              pass evaluation; if that job failed, its own health is Degraded)
--   Ready                                    -> Healthy
--   RolledBack                               -> Degraded (the stable revision serves, but the desired
--                                              revision failed its rollout analysis)
--   Failed                                   -> Degraded
--   Paused                                   -> Suspended (spec.rollout.paused)
--   not yet observed at the current generation -> Progressing
local hs = {}

local function condition_message(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind and c.message ~= nil and c.message ~= "" then
      if c.reason ~= nil and c.reason ~= "" then
        return c.reason .. ": " .. c.message
      end
      return c.message
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator to pick up the ModelDeployment"
  return hs
end

local generation = obj.metadata and obj.metadata.generation or nil
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
local map = {
  Pending = "Progressing",
  Blocked = "Progressing",
  Deploying = "Progressing",
  Progressing = "Progressing",
  Ready = "Healthy",
  RolledBack = "Degraded",
  Failed = "Degraded",
  Paused = "Suspended",
}
hs.status = map[phase] or "Unknown"

-- The condition that explains each phase (kubetune.reconcile.modeldeployment).
local explained_by = {
  Pending = "GatePassed",
  Blocked = "GatePassed",
  Deploying = "Progressing",
  Progressing = "Progressing",
  Paused = "Progressing",
  RolledBack = "RolledBack",
  Failed = "Available",
}
local message = nil
if phase == "Ready" then
  message = "Serving"
  if status.endpoint ~= nil then
    message = message .. " at " .. status.endpoint
  end
  if status.revision ~= nil then
    message = message .. " (revision " .. tostring(status.revision) .. ")"
  end
else
  local kind = explained_by[phase]
  if kind ~= nil then
    message = condition_message(status, kind)
  end
  if phase == "Progressing" and status.canaryWeight ~= nil then
    message = "Canary at " .. tostring(status.canaryWeight) .. "%" .. (message and (": " .. message) or "")
  elseif message == nil then
    message = phase
  end
end
if hs.status == "Unknown" then
  message = "Unknown phase " .. tostring(phase)
end
hs.message = message
return hs
