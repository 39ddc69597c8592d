// Green-context layouts, checked without a GPU: lanes take whole groups of the device's one
// split, a layout that does not fit is refused with one that does, and the planner only makes
// layouts that fit the split.
#include <gtest/gtest.h>

#include <map>

#include "gpulanes/core/error.h"
#include "gpulanes/exec/green_context.h"
#include "gpulanes/plan/planner.h"
#include "plan_support.h"

using namespace gpulanes;

namespace {

// An H100/H200 as the driver splits it: 132 SMs, groups of 8, 16 of them (4 SMs left out).
SmSplit hopper(int groups = 16) {
  SmSplit s;
  s.device_sms = 132;
  s.min_partition = 8;
  s.alignment = 8;
  s.group_sms = 8;
  s.groups = groups;
  return s;
}

std::string refusal(const SmSplit& split, const std::vector<int>& asked) {
  try {
    green_groups_for(split, asked, "cuda:0");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
    return e.what();
  }
  ADD_FAILURE() << "layout was not refused";
  return "";
}

}  // namespace

TEST(GreenSplit, LanesTakeWholeGroupsRoundedUp) {
  EXPECT_EQ(green_groups_for(hopper(), {32, 64}, "cuda:0"), (std::vector<int>{4, 8}));
  EXPECT_EQ(green_groups_for(hopper(), {1, 9, 16}, "cuda:0"), (std::vector<int>{1, 2, 2}));
  EXPECT_EQ(green_groups_for(hopper(), {64, 64}, "cuda:0"), (std::vector<int>{8, 8}));
  EXPECT_EQ(green_groups_for(hopper(), std::vector<int>(16, 8), "cuda:0"), std::vector<int>(16, 1));
}

TEST(GreenSplit, ALayoutThatDoesNotFitIsRefusedWithOneThatDoes) {
  // 66 + 66 = 132 SMs, but each rounds up to 72: 18 groups of the 16 there are.
  const std::string why = refusal(hopper(), {66, 66});
  EXPECT_NE(why.find("18 groups of 8"), std::string::npos) << why;
  EXPECT_NE(why.find("16 such groups (128 of its 132 SMs"), std::string::npos) << why;
  EXPECT_NE(why.find("this fits: [64, 64]"), std::string::npos) << why;
  // Clusters that leave a group out: 15 groups; the larger lane keeps more.
  EXPECT_NE(refusal(hopper(15), {64, 64}).find("this fits: [64, 56]"), std::string::npos);
  EXPECT_NE(refusal(hopper(), {96, 48, 16}).find("this fits: [80, 40, 8]"), std::string::npos);
  EXPECT_NE(refusal(hopper(), {132, 8}).find("this fits: ["), std::string::npos);
  EXPECT_NE(refusal(hopper(), std::vector<int>(17, 8)).find("at most 16 green lanes"),
            std::string::npos);
  EXPECT_NE(refusal(hopper(), {8, 0}).find("lane 1 on cuda:0 asks for 0 SMs"), std::string::npos);
  SmSplit none;
  EXPECT_THROW(green_groups_for(none, {8}, "cuda:0"), Error);
}

TEST(GreenSplit, WhatItSuggestsFitsAndKeepsEveryLane) {
  for (int groups = 1; groups <= 16; ++groups) {
    for (const std::vector<int>& asked : std::vector<std::vector<int>>{
             {132, 132}, {66, 66}, {100, 20, 8}, {8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8}}) {
      int need = 0;
      for (int a : asked) need += (a + 7) / 8;
      if (need <= groups || static_cast<int>(asked.size()) > groups) continue;
      const std::string why = refusal(hopper(groups), asked);
      const auto at = why.find("this fits: [");
      ASSERT_NE(at, std::string::npos) << why;
      std::vector<int> fits;
      for (std::size_t i = at + 12; i < why.size() && why[i] != ']';) {
        fits.push_back(std::stoi(why.substr(i)));
        i = why.find_first_of(",]", i);
        if (why[i] == ',') i += 2;
      }
      ASSERT_EQ(fits.size(), asked.size()) << why;
      for (std::size_t i = 0; i < fits.size(); ++i) {
        EXPECT_GE(fits[i], 8) << why;
        EXPECT_LE(fits[i], asked[i] + 7) << why;
      }
      EXPECT_NO_THROW(green_groups_for(hopper(groups), fits, "cuda:0")) << why;
    }
  }
}

TEST(GreenSplit, StreamsInGreenContextsNeedADriverOf12_5) {
  EXPECT_NE(green_driver_problem(12040).find("12.5"), std::string::npos);
  EXPECT_NE(green_driver_problem(12040).find("this one is 12.4"), std::string::npos);
  EXPECT_EQ(green_driver_problem(12050), "");
  EXPECT_EQ(green_driver_problem(13000), "");
}

TEST(GreenSplit, WholeGpuLanesGoAloneAndSplitLanesStayWithinTheSplit) {
  PlannerConfig cfg;
  cfg.sms_per_gpu = 132;
  cfg.split_sms = 120;
  EXPECT_TRUE(lane_fits(cfg, 0, 132));
  EXPECT_FALSE(lane_fits(cfg, 8, 132));
  EXPECT_TRUE(lane_fits(cfg, 112, 8));
  EXPECT_FALSE(lane_fits(cfg, 120, 8));
  EXPECT_FALSE(lane_fits(cfg, 0, 128));  // a split lane larger than the split
  cfg.split_sms = 0;                     // unknown: the whole GPU
  EXPECT_TRUE(lane_fits(cfg, 0, 128));
  EXPECT_TRUE(lane_fits(cfg, 128, 4));
}

TEST(GreenSplit, PlansFitTheSplitAtEveryLoad) {
  // A model whose throughput per SM is best on small lanes, so plans split GPUs into many.
  const ShareProfile prof = gpulanes::testing::linear_profile(300, 40);
  for (const char* variant : {"spatiotemporal", "no_interference", "self_tuning"}) {
    for (double rate : {50.0, 500.0, 5e3, 5e4, 5e5}) {
      PlannerConfig cfg;
      cfg.variant = variant;
      cfg.gpus = 2;
      cfg.sms_per_gpu = 132;
      cfg.granularity = 8;
      cfg.split_sms = 120;  // 15 groups of 8
      std::vector<PlannerModel> models = {{"a", rate, from_ms(20), 8, &prof},
                                          {"b", rate / 3, from_ms(50), 8, &prof},
                                          {"c", rate * 2, from_ms(10), 8, &prof}};
      const Plan plan = make_plan(models, cfg);
      std::map<int, int> used, whole_lanes, lanes;
      for (const PlannedLane& l : plan.lanes) {
        ++lanes[l.gpu];
        if (l.sms >= cfg.sms_per_gpu) {
          ++whole_lanes[l.gpu];
        } else {
          EXPECT_EQ(l.sms % cfg.granularity, 0) << variant << " " << rate;
          used[l.gpu] += l.sms;
        }
      }
      for (const auto& [gpu, n] : lanes) {
        EXPECT_TRUE(whole_lanes[gpu] == 0 || n == 1) << variant << " " << rate << " gpu " << gpu;
        EXPECT_LE(used[gpu], cfg.split_sms) << variant << " " << rate << " gpu " << gpu;
      }
    }
  }
}
