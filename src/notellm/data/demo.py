"""A seeded synthetic Xiaohongshu-style corpus: notes, authors' engagement and users' click sessions.

Everything is drawn with numpy and composed with Arrow compute kernels (no per-note Python objects), so
1M notes and a few million click events take well under a few minutes.

What the corpus encodes, so that models have something real to learn:
- Topics. 20 categories, 2-3 subcategories each, ~10 keywords per subcategory. A note's topic is one
  keyword; its title and body are filled from templates with that keyword, other keywords of the same
  subcategory and words of its category. Notes of one topic share words without being copies.
- Hashtags are drawn (without replacement) from the topic keyword, the subcategory's and category's tags
  and a few generic ones. `content` is the body without inline tags; `platform_body` rebuilds the body as
  the platform shows it (`... #tag[话题]# #tag[话题]#`), which `text.parse_hashtags` / `text.strip_hashtags`
  turn back into `hashtags` / `content`.
- Latent quality (recorded in `extra` JSON and the truth table):
      q = 0.8 skill(author) + 0.4 pop(category) + 0.3 [digit in title] + 0.25 [emoji in title]
          + 0.12 n_tags - 0.01 n_tags^2 - 0.04 |title length - 16| + N(0, 0.6)
  Impressions ~ gamma-Poisson(exp(7 + 0.9 q) x exposure(age)); likes ~ gamma-Poisson(impressions x
  sigmoid(-3.2 + 0.7 q)); collects / comments / shares ~ gamma-Poisson(fractions of likes), the collect
  fraction depending on the category. Authors write a power-law number of notes, mostly in a home
  category, so an author's past notes predict the next one (cold start).
- Click sessions: users have 1-3 interest categories. The first click of a session is a note of one of
  them; each next click stays in the same topic (45%), the same subcategory (25%), the same category (10%),
  jumps to another interest (8%) or is noise (12%). Notes are picked in proportion to sqrt(impressions).
  Every click happens after the clicked note was published.
"""

from __future__ import annotations

import datetime as dt
import functools
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from notellm.data.schema import EVENT_SCHEMA, NOTE_SCHEMA, write_notes
from notellm.errors import ConfigError
from notellm.io import write_json, write_parquet

# --- vocabulary -------------------------------------------------------------------------------------------
# category: (popularity weight, collects per like, category tags, aspects, {subcategory: (keywords, tags)})
CATEGORIES: dict[str, tuple[float, float, str, str, dict[str, tuple[str, str]]]] = {
    "穿搭": (1.0, 0.45, "穿搭 每日穿搭 ootd 穿搭分享", "版型 面料 颜色 质感 尺码 性价比", {
        "通勤穿搭": ("西装外套 白衬衫 阔腿裤 针织开衫 风衣 乐福鞋 半身裙 托特包 直筒裤 西装马甲",
                 "通勤穿搭 职场穿搭 上班穿什么 简约穿搭 通勤包"),
        "小个子穿搭": ("高腰裤 短款外套 厚底鞋 a字裙 短靴 牛仔短裤 针织背心 碎花连衣裙 阔腿牛仔裤 小香风外套",
                  "小个子穿搭 显高穿搭 150小个子 小个子显高 梨形身材穿搭"),
        "男生穿搭": ("工装裤 连帽卫衣 冲锋衣 牛仔夹克 帆布鞋 飞行员夹克 polo衫 老爹鞋 棒球帽 羊毛大衣",
                 "男生穿搭 男士穿搭 直男穿搭 韩系男生 日系穿搭"),
    }),
    "美食": (1.0, 0.6, "美食 美食分享 吃货日常 好吃到哭", "口感 味道 分量 卖相 火候 价格", {
        "家常菜": ("红烧肉 番茄炒蛋 可乐鸡翅 麻婆豆腐 酸辣土豆丝 糖醋排骨 清蒸鲈鱼 蒜蓉西兰花 土豆炖牛腩 鱼香肉丝",
                "家常菜 家常菜做法 下饭菜 一人食 快手菜"),
        "探店": ("火锅店 烤肉店 咖啡馆 广式早茶 日料店 小酒馆 面包店 烧烤摊 糖水铺 私房菜",
               "探店 宝藏小店 本地美食 周末去哪吃 美食探店"),
        "烘焙": ("戚风蛋糕 巴斯克 可颂 吐司 黄油曲奇 贝果 蛋挞 司康 提拉米苏 肉桂卷",
               "烘焙 烘焙日记 新手烘焙 空气炸锅美食 甜品"),
    }),
    "旅行": (0.9, 0.7, "旅行 旅行攻略 旅游 出去玩", "路线 住宿 门票 交通 人流 拍照机位", {
        "国内旅行": ("大理 成都 重庆 西安 厦门 新疆 西藏 长沙 青岛 丽江",
                 "国内旅行 自由行 小众旅行地 假期去哪玩 穷游"),
        "出境游": ("东京 大阪 首尔 曼谷 新加坡 巴厘岛 清迈 巴黎 冰岛 伊斯坦布尔",
                "出境游 日本旅行 出国旅行 签证攻略 海岛游"),
        "周边游": ("露营 徒步 古镇 民宿 温泉 爬山 骑行 赏花 海边 citywalk",
                "周边游 周末去哪儿 露营地推荐 亲近自然 城市漫步"),
    }),
    "美妆": (0.95, 0.65, "美妆 化妆 妆容分享 美妆好物", "持妆 显色 质地 上脸效果 性价比 颜色", {
        "底妆": ("粉底液 气垫 遮瑕 散粉 妆前乳 定妆喷雾 粉扑 素颜霜 隔离霜 腮红",
               "底妆 干皮粉底 油皮底妆 持妆 伪素颜"),
        "眼妆": ("眼影盘 眼线笔 睫毛膏 假睫毛 卧蚕笔 眉笔 双眼皮贴 睫毛夹 眼影刷 染眉膏",
               "眼妆 眼妆教程 新手化妆 单眼皮眼妆 眼影盘推荐"),
        "唇妆": ("唇釉 口红 唇泥 唇膜 唇蜜 唇线笔 哑光口红 滋润口红 镜面唇釉 唇部打底",
               "口红试色 黄皮口红 显白口红 口红推荐 唇妆"),
    }),
    "护肤": (0.9, 0.75, "护肤 护肤心得 护肤品推荐 皮肤管理", "成分 肤感 吸收 效果 性价比 刺激性", {
        "敏感肌": ("修护精华 舒缓喷雾 氨基酸洁面 屏障修护 修护面霜 补水面膜 神经酰胺 积雪草 保湿乳液 保湿水",
                "敏感肌 敏感肌护肤 烂脸修护 泛红 屏障受损"),
        "抗老": ("a醇 视黄醇 胜肽 眼霜 玻色因 精华液 面部按摩 早c晚a 抗氧化 紧致面霜",
               "抗老 抗初老 淡纹 熬夜肌 抗衰"),
        "防晒": ("防晒霜 防晒喷雾 物理防晒 防晒衣 遮阳伞 晒后修复 防晒帽 化学防晒 防晒乳 美白精华",
               "防晒 防晒推荐 夏日防晒 美白 防晒霜测评"),
    }),
    "健身": (0.85, 0.7, "健身 运动 自律 健身打卡", "强度 动作 饮食 效果 频率 坚持", {
        "减脂": ("跳绳 帕梅拉 有氧操 hiit 低卡餐 爬坡 慢跑 燃脂操 轻断食 暴汗操",
               "减脂 减肥 减脂餐 瘦身 燃脂"),
        "增肌": ("卧推 深蹲 硬拉 蛋白粉 引体向上 哑铃 练背 练腿 肌酸 增肌餐",
               "增肌 力量训练 健身房 健身男孩 撸铁"),
        "瑜伽": ("瑜伽垫 拉伸 普拉提 冥想 体态矫正 开肩 开髋 瑜伽裤 呼吸法 晨间瑜伽",
               "瑜伽 体态 居家运动 瑜伽入门 身体柔韧"),
    }),
    "家居": (0.8, 0.8, "家居 家居好物 我的家 居家生活", "尺寸 材质 颜值 实用性 价格 收纳空间", {
        "租房改造": ("出租屋 墙纸 地毯 落地灯 窗帘 软装 床品 绿植 挂画 桌布",
                 "租房改造 出租屋改造 小户型 租房好物 软装搭配"),
        "收纳": ("收纳盒 衣柜 厨房收纳 洞洞板 置物架 抽屉 真空压缩袋 冰箱收纳 玄关 桌面收纳",
               "收纳 收纳整理 断舍离 整理术 收纳好物"),
        "装修": ("全屋定制 瓷砖 吊顶 厨房装修 卫生间 木地板 奶油风 原木风 开关插座 灯光设计",
               "装修 装修日记 新房装修 装修避坑 家装"),
    }),
    "母婴": (0.6, 0.75, "母婴 育儿 宝宝 新手妈妈", "安全性 月龄 用量 口碑 材质 价格", {
        "孕期": ("孕吐 产检 待产包 孕妇装 胎动 孕期营养 顺产 月子中心 孕期护肤 唐筛",
               "孕期 怀孕 孕妈 备孕 孕期日常"),
        "辅食": ("米粉 果泥 蛋黄 辅食机 手指食物 宝宝面条 肉泥 蔬菜泥 磨牙棒 辅食碗",
               "辅食 宝宝辅食 辅食添加 辅食食谱 婴儿辅食"),
        "早教": ("绘本 早教卡片 积木 感统训练 亲子游戏 儿歌 拼图 益智玩具 英语启蒙 睡前故事",
               "早教 早教游戏 亲子阅读 绘本推荐 育儿经验"),
    }),
    "宠物": (0.75, 0.5, "宠物 萌宠 铲屎官日常 养宠", "性格 饮食 健康 掉毛 价格 训练", {
        "猫咪": ("布偶猫 英短 橘猫 猫粮 猫砂 猫抓板 冻干 猫爬架 驱虫 绝育",
               "猫咪 养猫 猫咪日常 新手养猫 喵星人"),
        "狗狗": ("柯基 金毛 柴犬 泰迪 边牧 狗粮 牵引绳 狗窝 遛狗 狗狗洗澡",
               "狗狗 养狗 狗狗日常 汪星人 萌宠日常"),
    }),
    "数码": (0.7, 0.55, "数码 数码好物 科技 开箱", "续航 性能 手感 屏幕 价格 做工", {
        "手机": ("iphone 安卓手机 折叠屏 手机壳 充电宝 影像旗舰 快充 小米手机 华为手机 手机膜",
               "手机 手机推荐 手机测评 换机 手机壁纸"),
        "电脑": ("笔记本电脑 macbook 机械键盘 显示器 平板 ipad 鼠标 电脑支架 扩展坞 游戏本",
               "电脑 笔记本 桌面搭建 生产力工具 电脑推荐"),
        "耳机": ("降噪耳机 蓝牙耳机 头戴耳机 airpods 音箱 有线耳机 智能手表 运动手环 耳夹式耳机 hifi",
               "耳机 耳机推荐 数码配件 智能穿戴 音质"),
    }),
    "学习": (0.8, 0.85, "学习 自律学习 学习方法 干货分享", "方法 时间安排 资料 效率 重点 心态", {
        "考研": ("考研数学 考研英语 考研政治 专业课 择校 复试 真题 背诵 调剂 考研日记",
               "考研 考研经验 考研上岸 考研规划 研究生"),
        "英语": ("雅思 托福 四六级 单词 口语 听力 英语阅读 语法 英语写作 外刊",
               "英语学习 英语口语 背单词 英语提升 备考"),
        "考公": ("行测 申论 结构化面试 公务员 事业编 选调生 国考 省考 常识判断 资料分析",
               "考公 公务员考试 考公上岸 考编 上岸经验"),
    }),
    "职场": (0.65, 0.75, "职场 打工人 职场干货 工作", "技巧 沟通 心态 效率 薪资 成长", {
        "求职面试": ("简历 群面 秋招 offer 实习 自我介绍 无领导小组 春招 薪资谈判 跳槽",
                 "求职 面试技巧 简历模板 应届生 找工作"),
        "职场技能": ("excel ppt 工作汇报 周报 时间管理 向上管理 沟通技巧 副业 会议纪要 职场礼仪",
                 "职场技能 办公技巧 excel技巧 职场沟通 提升自己"),
    }),
    "摄影": (0.6, 0.7, "摄影 拍照技巧 摄影分享 随手拍", "构图 光线 色调 参数 氛围 后期", {
        "手机摄影": ("手机拍照 人像模式 夜景 广角 微距 逆光 三分构图 拍照姿势 相机滤镜 抓拍",
                 "手机摄影 手机拍照技巧 手机修图 拍照姿势 日常拍照"),
        "人像摄影": ("人像 写真 胶片 ccd 微单 富士 定焦镜头 约拍 闺蜜照 情侣写真",
                 "人像摄影 人像写真 胶片摄影 ccd相机 约拍"),
        "修图": ("lightroom 醒图 调色 预设 磨皮 抠图 胶片滤镜 ins风 日系调色 美图秀秀",
               "修图 修图教程 lr调色 滤镜分享 调色教程"),
    }),
    "读书": (0.55, 0.8, "读书 读书笔记 书单 阅读", "文笔 情节 观点 启发 节奏 金句", {
        "小说": ("悬疑小说 推理小说 科幻小说 言情小说 东野圭吾 三体 百年孤独 活着 红楼梦 余华",
               "小说推荐 好书推荐 悬疑推理 文学 阅读打卡"),
        "个人成长": ("心理学 认知升级 习惯养成 自律 效率手册 人物传记 经济学 哲学 非暴力沟通 情绪管理",
                 "个人成长 自我提升 心理学书 好书分享 读书方法"),
    }),
    "影视": (0.8, 0.4, "影视 电影推荐 追剧 好剧推荐", "剧情 演技 画面 配乐 结局 节奏", {
        "电影": ("悬疑电影 动画电影 爱情电影 科幻电影 纪录片 喜剧电影 经典老片 治愈电影 恐怖片 院线新片",
               "电影 观影 宝藏电影 影评 电影分享"),
        "剧集": ("国产剧 韩剧 美剧 日剧 古装剧 悬疑剧 甜宠剧 短剧 职场剧 英剧",
               "剧荒 电视剧 下饭剧 追剧日常 剧评"),
        "综艺": ("恋综 音乐综艺 旅行综艺 脱口秀 真人秀 选秀 喜剧综艺 户外综艺 访谈节目 竞技综艺",
               "综艺 综艺推荐 下饭综艺 爆笑 综艺名场面"),
    }),
    "音乐": (0.55, 0.5, "音乐 音乐分享 宝藏歌曲 听歌", "旋律 歌词 编曲 音色 节奏 氛围", {
        "乐器": ("吉他 尤克里里 钢琴 架子鼓 小提琴 电子琴 口琴 古筝 贝斯 萨克斯",
               "乐器 学吉他 乐器学习 自学乐器 弹唱"),
        "歌单": ("华语歌单 粤语歌 欧美歌单 日语歌 民谣 说唱 独立音乐 纯音乐 学习bgm 开车歌单",
               "歌单 歌单分享 宝藏歌单 好听的歌 单曲循环"),
    }),
    "情感": (0.9, 0.3, "情感 情感语录 生活感悟 治愈", "沟通 边界感 安全感 情绪 信任 相处", {
        "恋爱": ("暧昧 异地恋 告白 分手 复合 约会 纪念日 恋爱脑 情侣相处 相亲",
               "恋爱 恋爱日常 恋爱技巧 情侣 恋爱心理"),
        "人际关系": ("友情 闺蜜 原生家庭 社恐 室友 同事关系 讨好型人格 独处 断联 社交",
                 "人际关系 原生家庭 社交恐惧 自我疗愈 情绪价值"),
    }),
    "游戏": (0.7, 0.35, "游戏 游戏日常 玩游戏 游戏分享", "画面 剧情 操作 氪金 玩法 平衡", {
        "手游": ("王者荣耀 原神 和平精英 蛋仔派对 恋与深空 崩坏星穹铁道 光遇 第五人格 金铲铲 开心消消乐",
               "手游 手游推荐 王者荣耀 原神 游戏攻略"),
        "主机游戏": ("switch ps5 塞尔达 黑神话悟空 艾尔登法环 动物森友会 双人成行 steam 独立游戏 xbox",
                 "主机游戏 switch游戏 steam游戏 单机游戏 游戏推荐"),
    }),
    "汽车": (0.45, 0.45, "汽车 用车 提车 车主日常", "续航 油耗 空间 驾驶感 配置 价格", {
        "新能源车": ("电动车 充电桩 特斯拉 比亚迪 理想 小米汽车 增程 纯电 智能驾驶 家用suv",
                 "新能源汽车 电车 提车日记 买车攻略 电车车主"),
        "自驾": ("自驾游 车载好物 驾照 科目二 侧方停车 洗车 车内香薰 行车记录仪 自驾路线 新手司机",
               "自驾 新手上路 驾考 用车技巧 自驾攻略"),
    }),
    "手工": (0.4, 0.7, "手工 手工diy diy 手作", "材料 步骤 难度 配色 成品 耗时", {
        "编织": ("钩针 毛线 棒针 围巾 钩针玩偶 杯垫 毛线包 发圈 编织教程 手织毛衣",
               "编织 毛线编织 钩针教程 手织 钩针新手"),
        "手账": ("手账本 和纸胶带 贴纸 印章 手账排版 手绘 钢笔 子弹笔记 拼贴 咕卡",
               "手账 手账素材 文具 咕卡 手账日常"),
        "黏土": ("超轻黏土 软陶 滴胶 奶油胶 羊毛毡 石塑黏土 黏土手办 冰箱贴 串珠 香薰蜡烛",
               "黏土 diy手工 滴胶 奶油胶 羊毛毡"),
    }),
}

GENERIC_TAGS = "好物分享 日常 生活 记录生活 干货 种草 平价好物 vlog 治愈系 今日分享"
EMOJI = ("[哭惹R] [笑哭R] [赞R] [害羞R] [哇R] [派对R] [doge] [飞吻R] [偷笑R] [萌萌哒R] [生气R] [失望R] "
         "[暗中观察R] [买爆R] [种草R] [拔草R] [石化R] [黄金薯R] [色色R] [皱眉R] ✨ 💕 🔥 😭 👍 🌟 💯")
_EMOJI_PATTERN = r"\[[^\[\]]+\]|[✨💕🔥😭👍🌟💯]"
WORDS = {
    "adj": "好看 好用 惊艳 治愈 高级 实用 舒服 上头 出片 划算 香 温柔 稳 省心",
    "hook": "建议收藏 新手必看 亲测有效 后悔没早点知道 一篇讲清楚 看完少走弯路 无广真实分享 答应我一定要试试 "
            "闭眼入 不踩雷 保姆级教程 纯干货",
    "feel": "整体很满意 会回购 推荐给大家 值得一试 比预期好 一分钱一分货 体验感拉满 幸福感满满 谁用谁知道 没有踩雷",
    "opener": "姐妹们 家人们谁懂啊 今天来分享 终于等到了 救命 答应我 宝子们 记录一下 碎碎念 分享一个好东西",
    "closer": "有问题评论区见 记得点赞收藏哦 喜欢的话点个关注 下期见 你们还想看什么 欢迎一起交流 我们下期再见 "
              "觉得有用就收藏吧",
    "price": "9.9 19.9 29 39 59 99 129 199 299 599",
}

TITLE_TEMPLATES = (
    "{kw}真的{adj}到哭{temo}",
    "{n}个{kw}小技巧｜{hook}",
    "{sub}｜{kw}+{kw2}{temo}",
    "谁懂啊！{kw}也太{adj}了吧{temo}",
    "{kw}分享｜{hook}",
    "新手{sub}指南：{kw}篇{temo}",
    "{price}元的{kw}？{hook}",
    "{kw}避雷{temo}这{n}点一定要注意",
    "姐妹们冲！{kw}{adj}到离谱",
    "{cat}日记｜今天的{kw}{temo}",
    "沉浸式{sub}{temo}",
    "私藏{kw}清单{temo}{hook}",
    "{kw}｜{adj}到想尖叫{temo}",
    "第{n}次尝试{kw}，{feel}",
    "关于{kw}的{n}个真相{temo}",
    "{kw}和{kw2}｜{sub}{hook}",
)
BODY_TEMPLATES = (
    "最近一直在研究{kw}，{aspect}真的很{adj}{emo}",
    "{kw}和{kw2}放在一起看，效果比想象中{adj}",
    "作为一个{sub}爱好者，{kw}我已经研究了{n}年了",
    "说实话{kw}的{aspect}比我想象的好太多",
    "重点说一下{aspect}：很{adj}，{feel}",
    "如果你也关注{kw}，一定要看看{kw2}{emo}",
    "{cat}这件事，{kw}真的绕不开",
    "踩过的坑：{kw}的{aspect}一定要提前了解",
    "整体打分{n}分，{feel}",
    "{kw}的{aspect}是我最在意的，这次{feel}",
    "顺便安利一下{kw2}，{aspect}也很{adj}",
    "之前一直纠结{kw}和{kw2}，现在终于想明白了",
    "关于{aspect}，我的建议是先从{kw}开始",
    "{kw}真的绝了，{feel}{emo}",
    "花了{price}块入门{kw}，{feel}",
    "每次{sub}都会想到{kw}，{feel}",
)
OPENER_TEMPLATE = ("{opener}{emo}",)
CLOSER_TEMPLATE = ("{closer}{emo}",)

# Session dynamics: P(next click stays in the same topic / subcategory / category / jumps to another
# interest / is noise).
TRANSITIONS = {"topic": 0.45, "subcategory": 0.25, "category": 0.10, "interest": 0.08, "noise": 0.12}
_QUALITY_NOTE = "q = 0.8 skill + 0.4 pop(cat) + 0.3 digit + 0.25 emoji + 0.12 n - 0.01 n^2 - 0.04 |len-16| + N(0,.6)"
DEFAULT_START = "2024-01-01"
DEFAULT_DAYS = 90


@dataclass(frozen=True)
class _Vocab:
    """The vocabulary compiled into arrays: topics (keywords) are numbered so that the topics of one
    subcategory, and the subcategories of one category, are contiguous."""

    categories: pa.Array
    cat_weight: np.ndarray
    cat_collect: np.ndarray
    subcategories: pa.Array
    sub_cat: np.ndarray
    sub_first_topic: np.ndarray
    sub_n_topics: np.ndarray
    cat_first_sub: np.ndarray
    cat_n_subs: np.ndarray
    topics: pa.Array
    topic_sub: np.ndarray
    aspects: pa.Array
    cat_first_aspect: np.ndarray
    cat_n_aspects: np.ndarray
    tags: pa.Array
    topic_tag_pool: np.ndarray   # (n_topics, width) tag ids, -1 = padding
    topic_tag_weight: np.ndarray  # (n_topics, width)
    words: dict[str, pa.Array]


@functools.cache
def _vocab() -> _Vocab:
    cats, weights, collects, subs, sub_cat, topics, topic_sub = [], [], [], [], [], [], []
    sub_first_topic, sub_n, cat_first_sub, cat_n_subs = [], [], [], []
    aspects, cat_first_aspect, cat_n_aspects = [], [], []
    tag_ids: dict[str, int] = {}
    pools: list[list[tuple[int, float]]] = []

    def tag_id(tag: str) -> int:
        return tag_ids.setdefault(tag, len(tag_ids))

    for c, (cat_name, (weight, collect, cat_tags, cat_aspects, subcats)) in enumerate(CATEGORIES.items()):
        cats.append(cat_name)
        weights.append(weight)
        collects.append(collect)
        cat_first_sub.append(len(subs))
        cat_n_subs.append(len(subcats))
        cat_first_aspect.append(len(aspects))
        cat_n_aspects.append(len(cat_aspects.split()))
        aspects.extend(cat_aspects.split())
        for sub, (keywords, sub_tags) in subcats.items():
            sub_first_topic.append(len(topics))
            sub_n.append(len(keywords.split()))
            for kw in keywords.split():
                topic_sub.append(len(subs))
                topics.append(kw)
                pool: dict[int, float] = {}
                for words, w in ((kw, 2.0), (sub_tags, 1.5), (cat_tags, 1.0), (GENERIC_TAGS, 0.3)):
                    for tag in words.split():
                        pool.setdefault(tag_id(tag), w)  # a tag listed twice keeps its first (larger) weight
                pools.append(list(pool.items()))
            sub_cat.append(c)
            subs.append(sub)
    width = max(len(p) for p in pools)
    pool_ids = np.full((len(pools), width), -1, dtype=np.int32)
    pool_w = np.zeros((len(pools), width), dtype=np.float32)
    for t, pool in enumerate(pools):
        pool_ids[t, : len(pool)] = [i for i, _ in pool]
        pool_w[t, : len(pool)] = [w for _, w in pool]
    strings = lambda xs: pa.array(xs, pa.string())  # noqa: E731
    return _Vocab(
        categories=strings(cats), cat_weight=np.array(weights), cat_collect=np.array(collects),
        subcategories=strings(subs), sub_cat=np.array(sub_cat), sub_first_topic=np.array(sub_first_topic),
        sub_n_topics=np.array(sub_n), cat_first_sub=np.array(cat_first_sub), cat_n_subs=np.array(cat_n_subs),
        topics=strings(topics), topic_sub=np.array(topic_sub), aspects=strings(aspects),
        cat_first_aspect=np.array(cat_first_aspect), cat_n_aspects=np.array(cat_n_aspects),
        tags=strings(list(tag_ids)), topic_tag_pool=pool_ids, topic_tag_weight=pool_w,
        words={
            **{k: strings(v.split()) for k, v in WORDS.items()},
            "emo": strings(EMOJI.split()),
            # titles carry an emoji about half the time: the empty strings make up the other half
            "temo": strings(EMOJI.split() + [""] * len(EMOJI.split())),
        },
    )


def vocabulary_strings() -> dict[str, list[str]]:
    """Every word the generator can put into a hashtag or a template slot, by kind (for checks)."""
    v = _vocab()
    return {
        "categories": v.categories.to_pylist(), "subcategories": v.subcategories.to_pylist(),
        "topics": v.topics.to_pylist(), "tags": v.tags.to_pylist(), "aspects": v.aspects.to_pylist(),
        **{k: a.to_pylist() for k, a in v.words.items()},
    }


# --- template filling -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Template:
    pieces: tuple[str | tuple[str], ...]  # literal text, or (slot name,)


def _parse_templates(templates: Sequence[str]) -> list[_Template]:
    parsed = []
    for text in templates:
        pieces: list[str | tuple[str]] = []
        for literal, name, _, _ in string.Formatter().parse(text):
            if literal:
                pieces.append(literal)
            if name:
                pieces.append((name,))
        assert any(isinstance(p, tuple) for p in pieces), f"template without a slot: {text}"
        parsed.append(_Template(tuple(pieces)))
    return parsed


class _Slots:
    """Values of template slots for a set of notes (rows): the note's own words, or fresh random ones."""

    def __init__(self, rng: np.random.Generator, vocab: _Vocab, topic: np.ndarray, sub: np.ndarray, cat: np.ndarray):
        self.rng, self.v, self.topic, self.sub, self.cat = rng, vocab, topic, sub, cat

    def __call__(self, name: str, rows: np.ndarray) -> pa.Array:
        v, rng, n = self.v, self.rng, len(rows)
        if name == "kw":
            return v.topics.take(self.topic[rows])
        if name == "kw2":  # another keyword of the same subcategory
            sub = self.sub[rows]
            count = v.sub_n_topics[sub]
            local = self.topic[rows] - v.sub_first_topic[sub]
            other = (local + 1 + (rng.random(n) * (count - 1)).astype(np.int64)) % count
            return v.topics.take(v.sub_first_topic[sub] + other)
        if name == "sub":
            return v.subcategories.take(self.sub[rows])
        if name == "cat":
            return v.categories.take(self.cat[rows])
        if name == "aspect":
            cat = self.cat[rows]
            return v.aspects.take(v.cat_first_aspect[cat] + (rng.random(n) * v.cat_n_aspects[cat]).astype(np.int64))
        if name == "n":
            return pc.cast(pa.array(rng.integers(2, 11, n)), pa.string())
        words = v.words[name]
        return words.take(rng.integers(0, len(words), n))


def _fill(templates: list[_Template], choice: np.ndarray, slots: _Slots) -> pa.Array:
    """String per row: template `choice[i]` filled for row i; null where choice is -1.

    Rows are grouped by template so each template is one vectorised join over its rows."""
    n = len(choice)
    active = np.flatnonzero(choice >= 0)
    order = active[np.argsort(choice[active], kind="stable")]
    counts = np.bincount(choice[active], minlength=len(templates))
    chunks, start = [], 0
    for template, count in zip(templates, counts):
        rows = order[start : start + count]
        start += count
        if count == 0:
            continue
        parts = [pa.scalar(p, pa.string()) if isinstance(p, str) else slots(p[0], rows) for p in template.pieces]
        chunks.append(pc.binary_join_element_wise(*parts, ""))
    if not chunks:
        return pa.nulls(n, pa.string())
    position = np.zeros(n, dtype=np.int64)
    position[order] = np.arange(len(order))
    return pa.concat_arrays(chunks).take(pa.array(position, mask=choice < 0))


# --- ids and times -----------------------------------------------------------------------------------------
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hex_ids(*columns: tuple[np.ndarray, int]) -> pa.Array:
    """One string per row: the fixed-width lowercase hex of each (values, width) column, concatenated.
    Built as raw Arrow buffers, so a million ids cost no Python strings."""
    parts = []
    for values, width in columns:
        shifts = np.arange(width - 1, -1, -1, dtype=np.uint64) * np.uint64(4)
        digits = (values.astype(np.uint64)[:, None] >> shifts) & np.uint64(15)
        parts.append(_HEX[digits.astype(np.intp)])
    chars = np.ascontiguousarray(np.concatenate(parts, axis=1))
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars)])


def _scramble(index: np.ndarray, key: int) -> np.ndarray:
    """A bijection of uint32 (odd multiplier, xor): distinct indices give distinct, random-looking ids."""
    mixed = (index.astype(np.uint64) * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFFFF)
    return mixed ^ np.uint64(key & 0xFFFFFFFF)


def _xhs_ids(created: np.ndarray, kind: int, index: np.ndarray, key: int) -> pa.Array:
    """Xiaohongshu-style 24-hex ids: creation time (8), kind (8), scrambled serial (8)."""
    return _hex_ids((created, 8), (np.full(len(index), kind, dtype=np.uint64), 8), (_scramble(index, key), 8))


def _epoch(start: str | dt.date | dt.datetime) -> int:
    if isinstance(start, str):
        try:
            start = dt.datetime.fromisoformat(start)
        except ValueError as exc:
            raise ConfigError(f"start: not an ISO date or time: {start!r}") from exc
    if not isinstance(start, dt.datetime):
        start = dt.datetime(start.year, start.month, start.day)
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.timezone.utc)
    return int(start.timestamp())


# Weights of the local (UTC+8) hour of posting: an evening peak; assumed shape, not measured.
_LOCAL_HOUR_WEIGHT = np.array([2, 1, 0.6, 0.4, 0.3, 0.3, 0.6, 1.2, 2, 2.5, 3, 3.2,
                         4, 3.6, 3, 3, 3.2, 3.6, 4.2, 5, 6, 6.5, 5.5, 3.5])


# --- notes -------------------------------------------------------------------------------------------------
@dataclass
class DemoCorpus:
    """A generated corpus: the Note table, the click events and the latent truth behind them."""

    notes: pa.Table   # NOTE_SCHEMA
    events: pa.Table  # EVENT_SCHEMA
    truth: pa.Table   # note_id, quality, topic_id, topic, category_id, subcategory_id, author_skill
    params: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        likes = self.notes.column("likes").to_numpy()
        return {
            **self.params,
            "notes": self.notes.num_rows,
            "authors": pc.count_distinct(self.notes.column("author_id")).as_py(),
            "users": pc.count_distinct(self.events.column("user_id")).as_py(),
            "sessions": pc.count_distinct(self.events.column("session_id")).as_py(),
            "events": self.events.num_rows,
            "categories": pc.count_distinct(pc.list_element(self.notes.column("category"), 0)).as_py(),
            "topics": pc.count_distinct(self.truth.column("topic_id")).as_py(),
            "median_likes": float(np.median(likes)) if len(likes) else None,
        }


def _authors(rng: np.random.Generator, n_notes: int, v: _Vocab) -> dict[str, np.ndarray]:
    """Authors with power-law activity (Pareto, capped at 50x the least active), a home category and
    subcategory, and a skill (slightly higher for prolific ones); notes go to authors in proportion to activity."""
    n_authors = max(1, n_notes // 8)
    activity = np.minimum(rng.pareto(1.3, n_authors) + 1.0, 50.0)  # the cap keeps one author from owning a small corpus
    notes_per_author = rng.multinomial(n_notes, activity / activity.sum())
    log_act = np.log(activity)
    z = (log_act - log_act.mean()) / (log_act.std() + 1e-9)
    skill = 0.3 * z + np.sqrt(1 - 0.09) * rng.standard_normal(n_authors)
    home_cat = rng.choice(len(v.cat_weight), n_authors, p=v.cat_weight / v.cat_weight.sum())
    home_sub = v.cat_first_sub[home_cat] + (rng.random(n_authors) * v.cat_n_subs[home_cat]).astype(np.int64)
    return {"count": notes_per_author, "skill": skill, "home_cat": home_cat, "home_sub": home_sub}


def _note_topics(rng: np.random.Generator, author: np.ndarray, authors: dict, v: _Vocab):
    """Category (85% the author's home one), subcategory (70% the home one within it), topic (uniform)."""
    n = len(author)
    p_cat = v.cat_weight / v.cat_weight.sum()
    cat = np.where(rng.random(n) < 0.85, authors["home_cat"][author], rng.choice(len(p_cat), n, p=p_cat))
    random_sub = v.cat_first_sub[cat] + (rng.random(n) * v.cat_n_subs[cat]).astype(np.int64)
    home_sub = authors["home_sub"][author]
    sub = np.where((v.sub_cat[home_sub] == cat) & (rng.random(n) < 0.7), home_sub, random_sub)
    topic = v.sub_first_topic[sub] + (rng.random(n) * v.sub_n_topics[sub]).astype(np.int64)
    return cat, sub, topic


def _publish_times(rng: np.random.Generator, n: int, start: int, days: int) -> np.ndarray:
    day = rng.integers(0, days, n)
    local_hour = rng.choice(24, n, p=_LOCAL_HOUR_WEIGHT / _LOCAL_HOUR_WEIGHT.sum())
    return start + day * 86400 + (local_hour - 8) % 24 * 3600 + rng.integers(0, 3600, n)


def _hashtags(rng: np.random.Generator, topic: np.ndarray, v: _Vocab) -> tuple[pa.Array, np.ndarray]:
    """Distinct tags per note, drawn without replacement by weight (exponential race over the topic's pool).
    10% of notes have none; the others 1-10 (mean ~5, as on the platform)."""
    n = len(topic)
    pool = v.topic_tag_pool[topic]
    weight = v.topic_tag_weight[topic]
    race = rng.standard_exponential(pool.shape, dtype=np.float32) / np.where(pool >= 0, weight, np.float32(1))
    race[pool < 0] = np.inf
    ranked = np.take_along_axis(pool, np.argsort(race, axis=1), axis=1)
    n_tags = np.where(rng.random(n) < 0.1, 0, 1 + rng.binomial(9, 0.45, n))
    n_tags = np.minimum(n_tags, (pool >= 0).sum(axis=1))
    flat = ranked[np.arange(ranked.shape[1])[None, :] < n_tags[:, None]]
    offsets = np.concatenate([[0], np.cumsum(n_tags)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), v.tags.take(flat)), n_tags


def _texts(rng: np.random.Generator, cat, sub, topic, v: _Vocab) -> tuple[pa.Array, pa.Array]:
    n = len(topic)
    slots = _Slots(rng, v, topic, sub, cat)
    title = _fill(_parse_templates(TITLE_TEMPLATES), rng.integers(0, len(TITLE_TEMPLATES), n), slots)
    body_templates = _parse_templates(BODY_TEMPLATES)
    n_middle = rng.integers(2, 6, n)
    # distinct middle templates per note: the first columns of a random permutation per row
    middle = np.argsort(rng.random((n, len(BODY_TEMPLATES)), dtype=np.float32), axis=1)[:, :5]
    sentences = [_fill(_parse_templates(OPENER_TEMPLATE), np.where(rng.random(n) < 0.7, 0, -1), slots)]
    for position in range(5):
        choice = np.where(n_middle > position, middle[:, position], -1)
        sentences.append(_fill(body_templates, choice, slots))
    sentences.append(_fill(_parse_templates(CLOSER_TEMPLATE), np.where(rng.random(n) < 0.6, 0, -1), slots))
    content = pc.binary_join_element_wise(*sentences, "。", null_handling="skip")
    return title, content


def _quality(rng, title: pa.Array, n_tags: np.ndarray, cat: np.ndarray, skill: np.ndarray, v: _Vocab) -> np.ndarray:
    log_pop = np.log(v.cat_weight)
    pop = (log_pop[cat] - log_pop.mean()) / log_pop.std()
    has_digit = pc.match_substring_regex(title, r"\d").to_numpy(zero_copy_only=False).astype(float)
    has_emoji = pc.match_substring_regex(title, _EMOJI_PATTERN).to_numpy(zero_copy_only=False).astype(float)
    title_len = pc.utf8_length(title).to_numpy().astype(float)
    return (0.8 * skill + 0.4 * pop + 0.3 * has_digit + 0.25 * has_emoji + 0.12 * n_tags - 0.01 * n_tags**2
            - 0.04 * np.abs(title_len - 16) + rng.normal(0, 0.6, len(cat)))


def _gamma_poisson(rng: np.random.Generator, mean: np.ndarray, shape: float) -> np.ndarray:
    """Overdispersed counts: Poisson with a gamma(shape, 1/shape) multiplied into the mean (negative binomial)."""
    return rng.poisson(mean * rng.gamma(shape, 1.0 / shape, len(mean))).astype(np.int64)


def _engagement(rng, quality: np.ndarray, published: np.ndarray, observed_at: int, cat: np.ndarray, v: _Vocab):
    age_days = (observed_at - published) / 86400.0
    exposure = 1.0 - np.exp(-(age_days + 0.1) / 2.0)  # a fresh note has not been shown to everyone yet
    impressions = _gamma_poisson(rng, np.exp(7.0 + 0.9 * quality) * exposure, 2.0)
    like_rate = 1.0 / (1.0 + np.exp(-(-3.2 + 0.7 * quality)))
    likes = _gamma_poisson(rng, impressions * like_rate, 3.0)
    collects = _gamma_poisson(rng, likes * v.cat_collect[cat] * np.exp(0.15 * quality), 3.0)
    comments = _gamma_poisson(rng, likes * 0.08, 2.0)
    shares = _gamma_poisson(rng, likes * 0.06, 2.0)
    return {"impressions": impressions, "likes": likes, "collects": collects, "comments": comments, "shares": shares}


def _extra_json(quality: np.ndarray, topic: np.ndarray, v: _Vocab) -> pa.Array:
    q = pc.cast(pc.round(pa.array(quality), 4), pa.string())
    t = pc.cast(pa.array(topic), pa.string())
    s = lambda text: pa.scalar(text, pa.string())  # noqa: E731
    return pc.binary_join_element_wise(
        s('{"source": "demo", "quality": '), q, s(', "topic_id": '), t, s(', "topic": "'), v.topics.take(topic),
        s('"}'), "",
    )


def _list_column(values: pa.Array, per_row: int, n: int) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * per_row), values)


def _generate_notes(rng: np.random.Generator, n_notes: int, start: int, days: int, v: _Vocab):
    authors = _authors(rng, n_notes, v)
    author = np.repeat(np.arange(len(authors["count"])), authors["count"])
    # rows in publish order (so each author's notes are in time order), authors in random time slots
    published = np.sort(_publish_times(rng, n_notes, start, days))
    author = rng.permutation(author)
    cat, sub, topic = _note_topics(rng, author, authors, v)
    hashtags, n_tags = _hashtags(rng, topic, v)
    title, content = _texts(rng, cat, sub, topic, v)
    skill = authors["skill"][author]
    quality = _quality(rng, title, n_tags, cat, skill, v)
    observed_at = start + days * 86400
    counts = _engagement(rng, quality, published, observed_at, cat, v)

    author_created = start - rng.integers(30, 3 * 365, len(authors["count"])) * 86400
    author_ids = _xhs_ids(author_created, 1, np.arange(len(authors["count"])), key=0x5EED1)
    note_ids = _xhs_ids(published, 0, np.arange(n_notes), key=int(rng.integers(2**32)))
    category_names = pa.concat_arrays([v.categories, v.subcategories])
    category_ids = np.stack([cat, len(v.categories) + sub], axis=1).ravel()
    columns = {
        "note_id": note_ids, "title": title, "content": content, "hashtags": hashtags,
        "category": _list_column(category_names.take(category_ids), 2, n_notes),
        "image_paths": _list_column(pa.array([], pa.string()), 0, n_notes),
        "author_id": author_ids.take(author),
        "published_at": pa.array(published, pa.timestamp("s", tz="UTC")),
        **{k: pa.array(counts[k]) for k in ("likes", "collects", "comments", "shares", "impressions")},
        "extra": _extra_json(quality, topic, v),
    }
    notes = pa.Table.from_arrays([columns[f.name] for f in NOTE_SCHEMA], schema=NOTE_SCHEMA)
    truth = pa.table({
        "note_id": note_ids, "quality": pa.array(quality), "topic_id": pa.array(topic.astype(np.int32)),
        "topic": v.topics.take(topic), "category_id": pa.array(cat.astype(np.int32)),
        "subcategory_id": pa.array(sub.astype(np.int32)), "author_skill": pa.array(skill),
    })
    arrays = {"cat": cat, "sub": sub, "topic": topic, "published": published, "impressions": counts["impressions"]}
    return notes, truth, arrays


# --- click sessions ----------------------------------------------------------------------------------------
class _NoteSampler:
    """Draw notes in proportion to a weight within a topic, subcategory, category or among all notes.

    Notes are sorted by topic; since topic ids nest in subcategories and categories, every group at every
    level is one contiguous range of that order, and a draw is one search in the cumulative weights."""

    def __init__(self, weight: np.ndarray, topic: np.ndarray, v: _Vocab):
        self.order = np.argsort(topic, kind="stable")
        self.cum = np.cumsum(weight[self.order])
        sorted_topic = topic[self.order]
        self.groups = {}
        for level, ids, n_groups in (
            ("topic", sorted_topic, len(v.topic_sub)),
            ("subcategory", v.topic_sub[sorted_topic], len(v.sub_cat)),
            ("category", v.sub_cat[v.topic_sub[sorted_topic]], len(v.cat_weight)),
        ):
            groups = np.arange(n_groups)
            self.groups[level] = (np.searchsorted(ids, groups, "left"), np.searchsorted(ids, groups, "right"))

    def sample(self, rng: np.random.Generator, level: str, group: np.ndarray) -> np.ndarray:
        """One note per requested group; an empty group falls back to all notes."""
        lo, hi = self.groups[level]
        lo, hi = lo[group], hi[group]
        empty = lo == hi
        lo, hi = np.where(empty, 0, lo), np.where(empty, len(self.cum), hi)
        return self._draw(rng, lo, hi)

    def sample_any(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self._draw(rng, np.zeros(n, dtype=np.int64), np.full(n, len(self.cum)))

    def _draw(self, rng, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        below = np.where(lo > 0, self.cum[np.maximum(lo - 1, 0)], 0.0)
        target = below + rng.random(len(lo)) * (self.cum[hi - 1] - below)
        pos = np.clip(np.searchsorted(self.cum, target, "right"), lo, hi - 1)
        return self.order[pos]


def _user_interests(rng: np.random.Generator, n_users: int, v: _Vocab) -> tuple[np.ndarray, np.ndarray]:
    """1-3 distinct interest categories per user, popular categories more often (Gumbel top-k)."""
    keys = np.log(v.cat_weight)[None, :] + rng.gumbel(size=(n_users, len(v.cat_weight)))
    top = np.argsort(-keys, axis=1)[:, :3]
    n_interests = rng.choice([1, 2, 3], n_users, p=[0.4, 0.4, 0.2])
    return top, n_interests


def _next_clicks(rng, prev: np.ndarray, interest_cat: np.ndarray, sampler: _NoteSampler, notes: dict, v: _Vocab):
    """One step of every active session: where the next click goes, given the previous note."""
    n = len(prev)
    levels = list(TRANSITIONS)
    move = rng.choice(len(levels), n, p=np.array(list(TRANSITIONS.values())))
    nxt = np.empty(n, dtype=np.int64)
    group_of = {"topic": notes["topic"][prev], "subcategory": notes["sub"][prev], "category": notes["cat"][prev]}
    for i, level in enumerate(levels):
        rows = np.flatnonzero(move == i)
        if level in group_of:
            nxt[rows] = sampler.sample(rng, level, group_of[level][rows])
        elif level == "interest":
            nxt[rows] = sampler.sample(rng, "category", interest_cat[rows])
        else:
            nxt[rows] = sampler.sample_any(rng, len(rows))
    repeat = nxt == prev  # clicking the same note twice in a row: redraw once within the subcategory
    nxt[repeat] = sampler.sample(rng, "subcategory", notes["sub"][prev[repeat]])
    return nxt


def _generate_events(rng, n_users: int, note_ids: pa.Array, notes: dict, observed_at: int, v: _Vocab,
                     max_session_len: int = 30) -> pa.Table:
    sampler = _NoteSampler(np.sqrt(notes["impressions"] + 1.0), notes["topic"], v)
    interests, n_interests = _user_interests(rng, n_users, v)
    sessions_per_user = 1 + rng.negative_binomial(1, 0.4, n_users)
    user = np.repeat(np.arange(n_users), sessions_per_user)
    n_sessions = len(user)
    if n_sessions == 0:
        return EVENT_SCHEMA.empty_table()
    length = np.minimum(1 + rng.geometric(0.2, n_sessions), max_session_len)
    first = np.concatenate([[0], np.cumsum(length)[:-1]])  # each session's first row in the flat click list
    session = np.repeat(np.arange(n_sessions), length)

    def pick_interest(sessions: np.ndarray) -> np.ndarray:
        u = user[sessions]
        return interests[u, (rng.random(len(sessions)) * n_interests[u]).astype(np.int64)]

    note = np.empty(int(length.sum()), dtype=np.int64)
    note[first] = sampler.sample(rng, "category", pick_interest(np.arange(n_sessions)))
    for step in range(1, int(length.max())):
        active = np.flatnonzero(length > step)
        rows = first[active] + step
        note[rows] = _next_clicks(rng, note[rows - 1], pick_interest(active), sampler, notes, v)

    # Times: gaps of 15 s + exponential(75 s) between clicks; the session starts after the latest
    # publish time of its notes, somewhere before the observation time when there is room.
    gaps = 15 + rng.exponential(75.0, len(note)).astype(np.int64)
    gaps[first] = 0
    elapsed = np.cumsum(gaps)
    offset = elapsed - elapsed[first][session]
    latest = np.maximum.reduceat(notes["published"][note], first)
    duration = offset[first + length - 1]
    room = np.maximum(observed_at - latest - 60 - duration, 0)
    session_start = latest + 60 + (rng.random(n_sessions) * room).astype(np.int64)

    # Rows by user, then session start; sessions are renumbered in that order.
    by_start = np.lexsort((session_start, user))
    new_length = length[by_start]
    new_first = np.concatenate([[0], np.cumsum(new_length)[:-1]])
    rows = np.arange(len(note)) - np.repeat(new_first - first[by_start], new_length)
    new_session = np.repeat(np.arange(n_sessions), new_length)
    timestamps = session_start[session[rows]] + offset[rows]

    user_created = observed_at - rng.integers(30, 5 * 365, n_users) * 86400
    user_ids = _xhs_ids(user_created, 2, np.arange(n_users), key=0xC1C4)
    width = len(str(n_sessions - 1))
    session_ids = pc.binary_join_element_wise(
        pa.scalar("s"), pc.utf8_lpad(pc.cast(pa.array(np.arange(n_sessions)), pa.string()), width, "0"), "")
    return pa.Table.from_arrays(
        [user_ids.take(user[by_start][new_session]), note_ids.take(note[rows]),
         pa.array(timestamps, pa.timestamp("s", tz="UTC")), session_ids.take(new_session)],
        schema=EVENT_SCHEMA,
    )


def generate_demo(
    n_notes: int = 1000,
    *,
    n_users: int | None = None,
    seed: int = 0,
    start: str | dt.date | dt.datetime = DEFAULT_START,
    days: int = DEFAULT_DAYS,
) -> DemoCorpus:
    """A seeded demo corpus of `n_notes` notes published over `days` days from `start` (UTC), and the click
    sessions of `n_users` users (default n_notes // 4, at least 20; 0 gives no events). Engagement counts
    are as observed at the end of the date range (`params["observed_at"]`); a few sessions that start just
    before it end a few minutes after it. Notes do not depend on `n_users`; the same arguments give
    identical tables. Arguments after `n_notes` are keyword-only, so a seed is never taken for a user count."""
    if n_notes < 1:
        raise ConfigError(f"n_notes must be >= 1, got {n_notes}")
    if days < 1:
        raise ConfigError(f"days must be >= 1, got {days}")
    if n_users is None:
        n_users = max(20, n_notes // 4)
    if n_users < 0:
        raise ConfigError(f"n_users must be >= 0, got {n_users}")
    start_ts = _epoch(start)
    v = _vocab()
    note_seed, event_seed = np.random.SeedSequence(seed).spawn(2)
    notes, truth, arrays = _generate_notes(np.random.default_rng(note_seed), n_notes, start_ts, days, v)
    observed_at = start_ts + days * 86400
    events = _generate_events(np.random.default_rng(event_seed), n_users, notes.column("note_id").combine_chunks(),
                              arrays, observed_at, v)
    params = {
        "seed": seed, "n_notes": n_notes, "n_users": n_users, "days": days,
        "start": dt.datetime.fromtimestamp(start_ts, dt.timezone.utc).isoformat(),
        "observed_at": dt.datetime.fromtimestamp(observed_at, dt.timezone.utc).isoformat(),
        "quality": _QUALITY_NOTE, "transitions": TRANSITIONS,
    }
    return DemoCorpus(notes=notes, events=events, truth=truth, params=params)


def platform_body(content: pa.Array | pa.ChunkedArray, hashtags: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The body as the platform shows it: content, a line break, then `#tag[话题]#` separated by spaces
    (content alone when a note has no tags). `text.parse_hashtags` / `text.strip_hashtags` invert it."""
    if isinstance(content, pa.ChunkedArray):
        content = content.combine_chunks()
    if isinstance(hashtags, pa.ChunkedArray):
        hashtags = hashtags.combine_chunks()
    marked = pc.binary_join_element_wise(pa.scalar("#"), hashtags.flatten(), pa.scalar("[话题]#"), "")
    tag_line = pc.binary_join(pa.ListArray.from_arrays(hashtags.offsets, marked), " ")
    tag_line = pc.if_else(pc.greater(pc.list_value_length(hashtags), 0), tag_line, pa.scalar(None, pa.string()))
    return pc.binary_join_element_wise(content, tag_line, "\n", null_handling="skip")


def write_demo(corpus: DemoCorpus, out_dir: str | Path) -> dict[str, Path]:
    """Write notes.parquet, events.parquet, truth.parquet and demo.json (parameters and counts), each atomically."""
    out = Path(out_dir)
    return {
        "notes": write_notes(corpus.notes, out / "notes.parquet"),
        "events": write_parquet(corpus.events.cast(EVENT_SCHEMA), out / "events.parquet"),
        "truth": write_parquet(corpus.truth, out / "truth.parquet"),
        "manifest": write_json(corpus.summary(), out / "demo.json"),
    }
