-- Argo CD health check for kubetune.dev/FineTuneJob (resource.customizations.health.kubetune.dev_FineTuneJob).
-- The phase is a summary; conditions are the truth. Tested by tests/chart/test_argocd_health.py.
--   Pending, Validating, Queued, Running, Evaluating -> Progressing
--   Succeeded, EvaluationPassed True (or absent)      -> Healthy
--   Succeeded, EvaluationPassed False                  -> Degraded (the model missed its thresholds:
--                                                        ModelDeployments gated on it will not roll out)
--   Failed                                             -> Degraded
--   Suspended                                          -> Suspended
--   not yet observed at the current generation         -> Progressing
local hs = {}

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function detail(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    if c.reason ~= nil and c.reason ~= "" then
      return c.reason .. ": " .. c.message
    end
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator to pick up the FineTuneJob"
  return hs
end

local generation = obj.metadata and obj.metadata.generation or nil
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  local passed = condition(status, "EvaluationPassed")
  if passed ~= nil and passed.status == "False" then
    hs.status = "Degraded"
    hs.message = detail(passed, "The model did not meet spec.evaluation.thresholds")
    return hs
  end
  hs.status = "Healthy"
  hs.message = detail(condition(status, "Complete"), "Fine-tuning succeeded")
  return hs
end
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = detail(condition(status, "Failed"), "Fine-tuning failed")
  return hs
end
if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = detail(condition(status, "Suspended"), "Suspended (spec.suspend is true)")
  return hs
end
if phase == "Pending" or phase == "Validating" or phase == "Queued" or phase == "Running" or phase == "Evaluating" then
  hs.status = "Progressing"
  local message = phase
  local progress = status.progress
  if phase == "Running" and progress ~= nil and progress.step ~= nil and progress.totalSteps ~= nil then
    message = message .. ": step " .. tostring(progress.step) .. "/" .. tostring(progress.totalSteps)
  end
  local reasons = { Validating = "DatasetValidated", Queued = "Admitted", Running = "Running", Evaluating = "Evaluated" }
  local c = condition(status, reasons[phase] or "")
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    message = message .. " (" .. c.message .. ")"
  end
  hs.message = message
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(phase)
return hs
