"""Rosbag replay evaluation: score a policy on recorded robot data (`mambavla replay`).

    bag.inspect(path, cameras, maps) -> BagInfo        topic roles by type and name, or ReplayError with a topic table
    offline.replay_offline(runtime, info, schedule)   the bag through InferenceSchedule + PolicyRuntime on the bag clock
    live.replay_live(...)                              the bag played into a policy_node child process (rclpy)
    metrics.score(runs, limits) -> (metrics, errors)  MAE, horizon, gripper, seams, controller admission, latency
    replay.replay_bags(...), replay.write_report(...)  replay.json and pictures

Only `live` imports rclpy and `mambavla.ros` (it is the ROS side of the command); the rest is plain Python.
"""
