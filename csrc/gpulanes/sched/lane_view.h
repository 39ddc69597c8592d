// What a batch policy knows of the lane it picks a batch for: which lane, on which device, with
// how many SMs. Policies never see the executing lane (thread, stream, worker process), so the
// same policy drives thread lanes, process lanes and the simulator's virtual lanes.
#pragma once

namespace gpulanes {

struct LaneView {
  int index = -1;         // the lane's index in the layout; profiles are kept per (model, lane)
  int device_index = -1;  // CUDA device, -1 on the CPU
  int sms = 0;            // SMs the lane owns (0 on the CPU)
};

}  // namespace gpulanes
