-- Argo CD health of a ContinualTrainingRun (continual.dev/v1alpha1), read from the status the operator
-- writes (phase, observedGeneration, batchesQueued, the Degraded/Training/Suspended conditions).
-- Healthy: idle and caught up. Progressing: training, queued, backing off, or not yet observed.
-- Degraded: halted (a batch failed permanently, steps not contiguous) or an invalid spec. Suspended:
-- spec.suspend is true. A problem outranks suspension: a halted run that is also suspended is Degraded.
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function step(status)
  if status.globalStep == nil then
    return ""
  end
  return " (global step " .. tostring(status.globalStep) .. ")"
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick the run up"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on generation " .. tostring(generation)
  return hs
end

local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.message
  return hs
end
if status.phase == "Halted" or status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "The run is " .. status.phase .. ": see its Degraded condition and Events"
  return hs
end

if status.phase == "Suspended" then
  local suspended = condition(status, "Suspended")
  hs.status = "Suspended"
  hs.message = (suspended ~= nil and suspended.message) or "spec.suspend is true"
  return hs
end

if status.phase == "Training" or status.phase == "Pending" then
  local training = condition(status, "Training")
  hs.status = "Progressing"
  hs.message = ((training ~= nil and training.message) or status.phase) .. step(status)
  return hs
end

if status.phase == "Idle" then
  local queued = status.batchesQueued or 0
  if queued > 0 then
    hs.status = "Progressing"
    hs.message = tostring(queued) .. " batch(es) queued" .. step(status)
    return hs
  end
  hs.status = "Healthy"
  hs.message = "Idle: every batch is trained, " .. tostring(status.batchesCompleted or 0) .. " completed" .. step(status)
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(status.phase)
return hs
